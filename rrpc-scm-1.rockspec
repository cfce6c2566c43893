rockspec_format = "3.0"
package = "rrpc"
version = "scm-1"
source = {
  url = "git+https://example.invalid/rrpc.git", -- `luarocks make` builds from the checkout
}
description = {
  summary = "Alibaba Cloud IoT Platform RRpc calls from Lua, with a C core",
  detailed = [[
Sends bytes to one IoT device through the Alibaba Cloud IoT Platform operation RRpc and
returns its reply: V1 and V3 request signatures (OpenSSL), HTTP with kept-alive
connections (libcurl), exact 64-bit MessageIds, and errors that say whether the device
may have received the message.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson",
  "argparse",     -- bin/rrpc
}
external_dependencies = {
  CURL = { header = "curl/curl.h" },
  OPENSSL = { header = "openssl/evp.h" },
  HIREDIS = { header = "hiredis/hiredis.h" },
}
build = {
  type = "builtin",
  modules = {
    ["rrpc.core"] = {
      sources = { "src/budget.c", "src/class.c", "src/codec.c", "src/core.c", "src/digest.c", "src/headers.c",
                  "src/options.c", "src/pool.c", "src/redis.c", "src/request.c", "src/response.c",
                  "src/session.c", "src/sign.c", "src/signal.c", "src/system.c", "src/tls_sessions.c",
                  "src/transfer.c", "src/url.c" },
      defines = { "_POSIX_C_SOURCE=200809L" },
      libraries = { "curl", "crypto", "hiredis" },
      incdirs = { "$(CURL_INCDIR)", "$(OPENSSL_INCDIR)", "$(HIREDIS_INCDIR)/hiredis" },
      libdirs = { "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)", "$(HIREDIS_LIBDIR)" },
    },
    ["rrpc"] = "lua/rrpc.lua",
    ["rrpc.args"] = "lua/rrpc/args.lua",
    ["rrpc.batch"] = "lua/rrpc/batch.lua",
    ["rrpc.cli"] = "lua/rrpc/cli/init.lua",
    ["rrpc.cli.batch"] = "lua/rrpc/cli/batch.lua",
    ["rrpc.cli.call"] = "lua/rrpc/cli/call.lua",
    ["rrpc.cli.common"] = "lua/rrpc/cli/common.lua",
    ["rrpc.cli.emulator"] = "lua/rrpc/cli/emulator.lua",
    ["rrpc.cli.input"] = "lua/rrpc/cli/input.lua",
    ["rrpc.cli.output"] = "lua/rrpc/cli/output.lua",
    ["rrpc.cli.progress"] = "lua/rrpc/cli/progress.lua",
    ["rrpc.cli.resume"] = "lua/rrpc/cli/resume.lua",
    ["rrpc.cli.sign"] = "lua/rrpc/cli/sign.lua",
    ["rrpc.client"] = "lua/rrpc/client.lua",
    ["rrpc.credentials"] = "lua/rrpc/credentials.lua",
    ["rrpc.errors"] = "lua/rrpc/errors.lua",
    ["rrpc.limiter"] = "lua/rrpc/limiter.lua",
    ["rrpc.limits"] = "lua/rrpc/limits.lua",
    ["rrpc.metrics"] = "lua/rrpc/metrics.lua",
    ["rrpc.ngx"] = "lua/rrpc/ngx.lua",
    ["rrpc.quota"] = "lua/rrpc/quota.lua",
    ["rrpc.quota.redis"] = "lua/rrpc/quota/redis.lua",
    ["rrpc.quota.shared_dict"] = "lua/rrpc/quota/shared_dict.lua",
    ["rrpc.response"] = "lua/rrpc/response.lua",
    ["rrpc.retry"] = "lua/rrpc/retry.lua",
    ["rrpc.signals"] = "lua/rrpc/signals.lua",
    ["rrpc.transport.curl"] = "lua/rrpc/transport/curl.lua",
    ["rrpc.transport.ngx"] = "lua/rrpc/transport/ngx.lua",
    ["rrpc.transport.ngx_redis"] = "lua/rrpc/transport/ngx_redis.lua",
    ["rrpc.transport.redis"] = "lua/rrpc/transport/redis.lua",
  },
  install = {
    bin = { rrpc = "bin/rrpc" },
  },
  -- beside the rock's bin/, where `rrpc emulator` looks for it
  copy_directories = { "emulator" },
}
