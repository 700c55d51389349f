"""The libfabric binding's Python layer without a peer: configuration, builder, errors."""
from __future__ import annotations

import pytest

from faas_runtime import fabric
from faas_runtime._build_fabric import HEADER, cdef_from_header
from tests.conftest import missing


def test_config_from_env():
    cfg = fabric.FabricConfig.from_env({"FAAS_FABRIC": "shm", "FAAS_FABRIC_DOMAIN": "x", "FAAS_FABRIC_NO_CQDATA": "1"})
    assert (cfg.provider, cfg.domain, cfg.no_cqdata, cfg.enabled) == ("shm", "x", True, True)
    assert fabric.FabricConfig.from_env({}).provider == "tcp"
    assert not fabric.FabricConfig.from_env({"FAAS_FABRIC": "off"}).enabled


def test_cdef_keeps_constants_and_drops_preprocessor():
    cdef = cdef_from_header(HEADER.read_text())
    assert "#ifndef" not in cdef and "#include" not in cdef
    assert "#define FF_EV_DATA 1" in cdef and "int ff_call(" in cdef


@pytest.fixture
def binding():
    if not fabric.available():
        missing("the libfabric binding is not built (apt-get install libfabric-dev; pip install -e .)")


needs_binding = pytest.mark.usefixtures("binding")


@needs_binding
def test_unknown_domain_is_fabric_error_with_fi_strerror_text():
    with pytest.raises(fabric.FabricError) as err:
        fabric.Endpoint(fabric.FabricConfig("tcp", "no-such-interface"))
    assert err.value.code == fabric.FI_ENODATA
    assert "No data available" in str(err.value) and "no-such-interface" in str(err.value)


@needs_binding
def test_endpoint_owns_and_frees_registrations():
    before = fabric.registrations()
    ep = fabric.Endpoint(fabric.FabricConfig("tcp", "lo"))
    regions = [ep.register(size=n) for n in (0, 1, 4096)]
    ep.register(b"read-only bytes")  # registered in place, no copy
    assert fabric.registrations() == before + 4
    regions[0].close()
    regions[0].close()  # idempotent
    ep.close()
    assert fabric.registrations() == before
    assert all(r.closed for r in regions)


@needs_binding
def test_write_without_cqdata_config_is_reported():
    with fabric.Endpoint(fabric.FabricConfig("tcp", "lo", no_cqdata=True)) as ep:
        assert ep.describe()["signal"] == "write+send"
