"""--faas-share spec, size and core-list parsing (the C core through cffi)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spank_plugin.core import (
    MAX_CPUS,
    ConfigError,
    Config,
    ShareSpec,
    SpecError,
    parse_config,
    parse_cpulist,
    parse_size_mb,
    parse_spec,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, ShareSpec("auto")),
        ("", ShareSpec("auto")),
        ("auto", ShareSpec("auto")),
        ("no", ShareSpec("no")),
        ("cores=2", ShareSpec("explicit", cores=2)),
        ("mem=4G", ShareSpec("explicit", mem_mb=4096)),
        ("cores=2,mem=4G", ShareSpec("explicit", cores=2, mem_mb=4096)),
        ("mem=512,cores=1", ShareSpec("explicit", cores=1, mem_mb=512)),
        ("cores=4,mem=16g,until=10", ShareSpec("explicit", 4, 16384, 10)),
        ("until=5,mem=1T", ShareSpec("explicit", 0, 1024 * 1024, 5)),
        (f"cores={MAX_CPUS}", ShareSpec("explicit", cores=MAX_CPUS)),
        ("mem=2GB", ShareSpec("explicit", mem_mb=2048)),
        ("mem=2GiB", ShareSpec("explicit", mem_mb=2048)),
    ],
)
def test_good_specs(text, expected):
    assert parse_spec(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("bogus", "'bogus' is not key=value"),
        ("cpus=2", "unknown key 'cpus' (expected cores, mem or until)"),
        ("cores=x", "cores must be a positive integer, got 'x'"),
        ("cores=0", "cores must be a positive integer, got '0'"),
        ("cores=-1", "cores must be a positive integer, got '-1'"),
        ("cores=", "cores must be a positive integer, got ''"),
        ("cores=99999999999", "cores must be a positive integer, got '99999999999'"),
        (f"cores={MAX_CPUS + 1}", f"cores must be at most {MAX_CPUS}"),
        ("cores=2,cores=3", "duplicate key 'cores'"),
        ("mem=1G,mem=2G", "duplicate key 'mem'"),
        ("cores=1,until=1,until=2", "duplicate key 'until'"),
        ("until=10", "until needs cores=N or mem=SIZE"),
        ("until=0,cores=1", "until must be a positive number of minutes, got '0'"),
        ("cores=2,", "empty item"),
        (",cores=2", "empty item"),
        ("cores=2,,mem=1G", "empty item"),
        ("cores=2 ", "got '2 '"),
        (" cores=2", "unknown key ' cores'"),
        ("cores=2x", "got '2x'"),
        ("mem=0", "mem: size must be positive"),
        ("mem=4Q", "mem: bad size suffix in '4Q'"),
        ("mem=4GBB", "mem: bad size suffix"),
        ("mem=1.5G", "mem: size must be a whole number, got '1.5G'"),
        ("mem=512K", "below the 1 MiB minimum"),
        ("mem=99999999999999999T", "mem: size '99999999999999999T' is too large"),
        ("mem=G", "mem: size must be a positive integer"),
        ("auto,cores=2", "'auto' cannot be combined"),
        ("cores", "'cores' needs a value"),
        ("AUTO", "'AUTO' is not key=value"),
    ],
)
def test_bad_specs_name_the_bad_part(text, message):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "text, mb",
    [("1", 1), ("4096", 4096), ("1024K", 1), ("1536k", 1), ("2M", 2), ("3G", 3072), ("1t", 1048576),
     ("2MiB", 2), ("2mb", 2)],
)
def test_sizes(text, mb):
    assert parse_size_mb(text) == mb


@pytest.mark.parametrize("text", ["", "0", "0G", "-1", "1023K", "x", "1X", "1 G", "18446744073709551616",
                                  "17592186044416T"])
def test_bad_sizes(text):
    with pytest.raises(SpecError):
        parse_size_mb(text)


@pytest.mark.parametrize(
    "text, ids",
    [("0", [0]), ("0-3,6,8-9", [0, 1, 2, 3, 6, 8, 9]), ("9,1-2,2", [1, 2, 9]), ("4095", [4095])],
)
def test_cpulists(text, ids):
    assert parse_cpulist(text) == ids


@pytest.mark.parametrize(
    "text, message",
    [("", "empty"), ("3-1", "reversed core range '3-1'"), ("a", "bad core id 'a'"), ("1-", "bad core range"),
     ("1,,2", "empty item"), ("1,", "trailing comma"), ("4096", "exceeds the maximum 4095"),
     ("0-99999999999", "bad core range"), ("-1", "bad core range")],
)
def test_bad_cpulists(text, message):
    with pytest.raises(SpecError, match=message):
        parse_cpulist(text)


# --------------------------------------------------------------------------- config

def test_config_defaults():
    assert parse_config([]) == Config()
    assert parse_config([]).default_spec == ShareSpec("no")


def test_config_all_keys():
    cfg = parse_config(["spool=/tmp/s", "cpu_map=block", "node_cpus=8", "reserve_cores=1",
                        "reserve_mem=1G", "auto_mem_percent=25", "default=cores=2,mem=4G"])
    assert cfg == Config("/tmp/s", "block", 8, 1, 1024, 25, ShareSpec("explicit", 2, 4096))
    assert parse_config(["reserve_mem=0", "default=auto"]).default_spec == ShareSpec("auto")


@pytest.mark.parametrize(
    "arg, message",
    [("cpus=2", "unknown key 'cpus'"), ("spool", "not key=value"), ("spool=rel/dir", "absolute"),
     ("cpu_map=foo", "cpu_map must be identity or block, got 'foo'"), ("node_cpus=x", "node_cpus"),
     ("auto_mem_percent=0", "1..100"), ("auto_mem_percent=101", "1..100"),
     ("reserve_mem=1Q", "reserve_mem: bad size suffix"), ("default=bogus", "default: 'bogus'"),
     ("default=", "default needs a spec")],
)
def test_bad_config(arg, message):
    with pytest.raises(ConfigError, match=message):
        parse_config([arg])


# --------------------------------------------------------------------------- properties

@settings(max_examples=500)
@given(st.text(max_size=60))
def test_fuzz_never_crashes(text):
    try:
        spec = parse_spec(text)
    except SpecError as exc:
        assert str(exc)  # always a message
    else:
        assert spec.mode in ("auto", "no", "explicit")


_alphabet = st.sampled_from(list("cores=memuntil,0123456789KMGTkmgtB-xi "))


@settings(max_examples=500)
@given(st.text(alphabet=_alphabet, max_size=40))
def test_fuzz_near_grammar(text):
    try:
        spec = parse_spec(text)
    except SpecError:
        return
    # Whatever parses re-renders to a spec that parses to the same value.
    assert parse_spec(spec.to_text()) == spec


_explicit = st.builds(
    ShareSpec,
    mode=st.just("explicit"),
    cores=st.integers(0, MAX_CPUS),
    mem_mb=st.integers(0, 2**40),
    until_min=st.integers(0, 2**32 - 1),
).filter(lambda s: s.cores or s.mem_mb)


@given(_explicit, st.randoms())
def test_round_trip_generated_specs(spec, rnd):
    parts = spec.to_text().split(",")
    rnd.shuffle(parts)  # key order does not matter
    assert parse_spec(",".join(parts)) == spec


@given(st.lists(st.integers(0, MAX_CPUS - 1), min_size=1, max_size=50))
def test_cpulist_round_trip(ids):
    text = ",".join(str(i) for i in ids)
    assert parse_cpulist(text) == sorted(set(ids))
