local rrpc = require "rrpc"
local core = require "rrpc.core"

-- Form / query decoding for checking what build_request produced.
local function parse_form(s)
  local params = {}
  for pair in s:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    local function unescape(x) return (x:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)) end
    params[unescape(k)] = unescape(v)
  end
  return params
end

describe("sign_v1", function()
  local params = {
    AccessKeyId = "testid", Action = "DescribeRegions", Format = "XML",
    SignatureMethod = "HMAC-SHA1", SignatureNonce = "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
    SignatureVersion = "1.0", Timestamp = "2016-02-23T12:46:24Z", Version = "2014-05-26",
  }

  it("matches the published GET vector", function()
    local signature, string_to_sign = rrpc.sign_v1("GET", params, "testsecret")
    assert.equal("OLeaidS1JvxuMvnyHOwuJ+uX5qY=", signature)
    assert.equal("GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML" ..
      "%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf" ..
      "%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26",
      string_to_sign)
  end)

  it("matches the published POST vector", function()
    assert.equal("MxbnVAM4w6sft9xjVpe/GCKueuk=", (rrpc.sign_v1("POST", params, "testsecret")))
  end)

  it("leaves out a Signature parameter and signs numbers as their decimal text", function()
    local with = {}
    for k, v in pairs(params) do with[k] = v end
    with.Signature = "ignored"
    assert.equal("OLeaidS1JvxuMvnyHOwuJ+uX5qY=", (rrpc.sign_v1("GET", with, "testsecret")))
    local _, sts_number = rrpc.sign_v1("GET", { Timeout = 5000 }, "s")
    local _, sts_string = rrpc.sign_v1("GET", { Timeout = "5000" }, "s")
    assert.equal(sts_string, sts_number)
  end)

  it("sorts names in byte order and encodes special characters in values", function()
    local _, sts = rrpc.sign_v1("POST", { b = "a b*~", B = "+/=", a = "" }, "s")
    -- CQS "B=%2B%2F%3D&a=&b=a%20b%2A~", then encoded once more
    assert.equal("POST&%2F&B%3D%252B%252F%253D%26a%3D%26b%3Da%2520b%252A~", sts)
  end)

  it("raises on bad arguments, naming them", function()
    assert.has_error(function() rrpc.sign_v1(nil, {}, "s") end,
      "bad argument #1 to 'sign_v1' (string expected, got nil)")
    assert.has_error(function() rrpc.sign_v1("GET", "x", "s") end,
      "bad argument #2 to 'sign_v1' (table expected, got string)")
    assert.has_error(function() rrpc.sign_v1("GET", {}, nil) end,
      "bad argument #3 to 'sign_v1' (string expected, got nil)")
    assert.has_error(function() rrpc.sign_v1("GET", { [1] = "x" }, "s") end,
      "bad params: names must be strings, got number")
    assert.has_error(function() rrpc.sign_v1("GET", { A = {} }, "s") end,
      "bad params: value of 'A' must be a string, number or boolean, got table")
  end)
end)

describe("sign_v3", function()
  local vector = {
    method = "POST", host = "ecs.cn-shanghai.aliyuncs.com", path = "/",
    query = { ImageId = "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd", RegionId = "cn-shanghai" },
    headers = {
      ["x-acs-action"] = "RunInstances", ["x-acs-version"] = "2014-05-26",
      ["x-acs-date"] = "2023-10-26T10:22:32Z",
      ["x-acs-signature-nonce"] = "3156853299f313e23d1673dc12e1703d",
    },
    body = "", access_key_id = "YourAccessKeyId", access_key_secret = "YourAccessKeySecret",
  }

  it("matches the published vector", function()
    local authorization, canonical_request, string_to_sign = rrpc.sign_v3(vector)
    assert.equal("ACS3-HMAC-SHA256\n7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259",
      string_to_sign)
    assert.equal("ACS3-HMAC-SHA256 Credential=YourAccessKeyId," ..
      "SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version," ..
      "Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0", authorization)
    assert.equal(table.concat({
      "POST", "/",
      "ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai",
      "host:ecs.cn-shanghai.aliyuncs.com", "x-acs-action:RunInstances",
      "x-acs-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      "x-acs-date:2023-10-26T10:22:32Z", "x-acs-signature-nonce:3156853299f313e23d1673dc12e1703d",
      "x-acs-version:2014-05-26", "",
      "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version",
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    }, "\n"), canonical_request)
  end)

  it("lower-cases and trims header names and values, and signs only host, content-type, x-acs-*", function()
    local copy = {}
    for k, v in pairs(vector) do copy[k] = v end
    copy.headers = {
      ["X-Acs-Action"] = "  RunInstances ", ["x-acs-version"] = "2014-05-26",
      ["X-ACS-DATE"] = "2023-10-26T10:22:32Z", ["x-acs-signature-nonce"] = "3156853299f313e23d1673dc12e1703d",
      ["User-Agent"] = "not signed", Accept = "application/json",
    }
    assert.equal((rrpc.sign_v3(vector)), (rrpc.sign_v3(copy)))
    copy.headers["Content-Type"] = "application/x-www-form-urlencoded"
    local authorization = rrpc.sign_v3(copy)
    assert.matches("SignedHeaders=content%-type;host;x%-acs%-action;", authorization)
  end)

  it("hashes the body into the canonical request and its x-acs-content-sha256", function()
    local copy = {}
    for k, v in pairs(vector) do copy[k] = v end
    copy.body = "a=b"
    local _, canonical_request = rrpc.sign_v3(copy)
    local body_hash = canonical_request:match("\n(%x+)$")
    assert.equal("42144f3939c3ffbbf0bf8b1f12affb5c23a4c5bd41e0ff672d54a5754f062058", body_hash) -- sha256sum
    assert.truthy(canonical_request:find("\nx-acs-content-sha256:" .. body_hash .. "\n", 1, true))
    assert.not_equal((rrpc.sign_v3(vector)), (rrpc.sign_v3(copy)))
  end)

  it("raises on missing or mistyped fields, naming them", function()
    assert.has_error(function() rrpc.sign_v3(nil) end,
      "bad argument #1 to 'sign_v3' (table expected, got nil)")
    for _, field in ipairs { "method", "host", "access_key_id", "access_key_secret" } do
      local copy = {}
      for k, v in pairs(vector) do copy[k] = v end
      copy[field] = nil
      assert.has_error(function() rrpc.sign_v3(copy) end,
        ("bad field '%s' (string expected, got nil)"):format(field))
    end
  end)
end)

describe("build_request", function()
  local base = {
    endpoint = "http://127.0.0.1:1", host = "127.0.0.1:1", action = "RRpc",
    version = "2018-01-20", params = { ProductKey = "pk", DeviceName = "dn", Timeout = 5000 },
    access_key_id = "id", access_key_secret = "secret", region_id = "cn-shanghai",
  }
  local function with(overrides)
    local t = {}
    for k, v in pairs(base) do t[k] = v end
    for k, v in pairs(overrides) do t[k] = v end
    return t
  end

  it("V1 in the body: every parameter form-encoded and signed, a valid signature", function()
    local url, headers, body = core.build_request(with { signature = "v1" })
    assert.equal("http://127.0.0.1:1/", url)
    assert.equal("application/x-www-form-urlencoded", headers["Content-Type"])
    local params = parse_form(body)
    assert.equal("RRpc", params.Action)
    assert.equal("JSON", params.Format)
    assert.equal("5000", params.Timeout)
    assert.equal("cn-shanghai", params.RegionId)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", params.Timestamp)
    assert.matches("^%x+$", params.SignatureNonce)
    assert.equal(params.Signature, (rrpc.sign_v1("POST", params, "secret")))
  end)

  it("V1 in the query: the same parameters in the URL and an empty body", function()
    local url, _, body = core.build_request(with { signature = "v1", placement = "query" })
    assert.equal("", body)
    local params = parse_form(url:match("%?(.*)$"))
    assert.equal("pk", params.ProductKey)
    assert.equal(params.Signature, (rrpc.sign_v1("POST", params, "secret")))
  end)

  it("V3: headers and an Authorization that sign_v3 reproduces", function()
    local url, headers, body = core.build_request(with { signature = "v3" })
    assert.equal("http://127.0.0.1:1/", url)
    assert.equal("RRpc", headers["x-acs-action"])
    assert.equal("2018-01-20", headers["x-acs-version"])
    local sign_headers = {}
    for k, v in pairs(headers) do if k ~= "authorization" then sign_headers[k] = v end end
    local authorization = rrpc.sign_v3 { method = "POST", host = "127.0.0.1:1", headers = sign_headers,
      body = body, access_key_id = "id", access_key_secret = "secret" }
    assert.equal(authorization, headers.authorization)
    assert.equal("pk", parse_form(body).ProductKey)
  end)

  it("draws a fresh nonce for every request", function()
    local seen = {}
    for _ = 1, 200 do
      local _, headers = core.build_request(with {})
      local nonce = headers["x-acs-signature-nonce"]
      assert.is_nil(seen[nonce])
      seen[nonce] = true
    end
  end)

  it("sends the STS token when there is one", function()
    local _, headers = core.build_request(with { security_token = "tok" })
    assert.equal("tok", headers["x-acs-security-token"])
    assert.matches("x%-acs%-security%-token", headers.authorization)
    local _, _, body = core.build_request(with { security_token = "tok", signature = "v1" })
    assert.equal("tok", parse_form(body).SecurityToken)
  end)

  it("rejects unknown signature and placement choices", function()
    assert.has_error(function() core.build_request(with { signature = "v2" }) end,
      "bad field 'signature' (\"v1\" or \"v3\" expected, got \"v2\")")
    assert.has_error(function() core.build_request(with { placement = "header" }) end,
      "bad field 'placement' (\"body\" or \"query\" expected, got \"header\")")
  end)
end)
