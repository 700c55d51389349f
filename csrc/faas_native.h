/* slurm-faas native functions: the contract a C/C++ function builds against.
 *
 * A function is a symbol in a shared object inside the function's code dir; its
 * entrypoint is "<path to .so relative to the code dir>:<symbol>", for example
 * "lib/libecho.so:echo". The executor dlopens the library once and calls
 *
 *     int fn(const void *in, size_t in_len, void *out, size_t out_cap, size_t *out_len);
 *
 * for every invocation, over every path: cold/warm runs and ZeroMQ hot leases
 * (through cffi, or ctypes where the binding is absent), and RMA hot leases
 * straight from the C completion loop, with no Python per call.
 *
 *   in, in_len   the payload: the JSON text of the invocation's payload (UTF-8,
 *                not NUL-terminated); on RMA leases it lies in the registered
 *                request ring and is valid only during the call.
 *   out, out_cap where to write the result: the JSON text of the value.
 *   *out_len     set it to the bytes written.
 *   return       FAAS_NATIVE_OK: success, out[0, *out_len) is the result
 *                (*out_len <= out_cap, else the call fails);
 *                FAAS_NATIVE_TOO_SMALL: the result needs *out_len bytes, more than
 *                out_cap; the executor calls again with at least that much room
 *                (so a function must have no side effect before it knows the
 *                result fits);
 *                anything else: the invocation failed with that code; out[0,
 *                *out_len) may hold a UTF-8 message (the caller's FunctionError
 *                reads "NativeFunctionError: <entrypoint> returned <code>: <message>").
 *
 * Calls never overlap within one executor (one at a time, from any thread).
 * The function must not keep pointers to in or out after it returns and must
 * not crash: a fault kills the executor (the agent reports the invocation as
 * failed). Build with: cc -shared -fPIC -O2 -o libecho.so echo.c
 */
#ifndef FAAS_NATIVE_H
#define FAAS_NATIVE_H

#include <stddef.h>

#define FAAS_NATIVE_OK 0
#define FAAS_NATIVE_TOO_SMALL 1

typedef int faas_native_fn(const void *in, size_t in_len, void *out, size_t out_cap, size_t *out_len);

#endif
