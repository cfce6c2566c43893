local rrpc = require "rrpc"

describe("percent_encode", function()
  it("keeps only A-Z a-z 0-9 - _ . ~", function()
    assert.equal("AZaz09-_.~", rrpc.percent_encode("AZaz09-_.~"))
  end)

  it("encodes space as %20, never +, and * as %2A", function()
    assert.equal("a%20b%2Ac%2Bd", rrpc.percent_encode("a b*c+d"))
  end)

  it("encodes UTF-8 bytes one by one in upper-case hex", function()
    assert.equal("%C3%A9%E4%B8%AD", rrpc.percent_encode("é中"))
  end)

  it("encodes every byte that is not unreserved as %XY", function()
    for byte = 0, 255 do
      local c = string.char(byte)
      local want = c:match("[A-Za-z0-9%-_.~]") and c or ("%%%02X"):format(byte)
      assert.equal(want, rrpc.percent_encode(c))
    end
  end)

  it("handles the empty string and NUL bytes", function()
    assert.equal("", rrpc.percent_encode(""))
    assert.equal("a%00b", rrpc.percent_encode("a\0b"))
  end)

  it("rejects what is not a string, naming the argument", function()
    for _, bad in ipairs { 42, true, {}, print } do
      assert.has_error(function() rrpc.percent_encode(bad) end,
        ("bad argument #1 to 'percent_encode' (string expected, got %s)"):format(type(bad)))
    end
    assert.has_error(function() rrpc.percent_encode() end,
      "bad argument #1 to 'percent_encode' (string expected, got no value)")
  end)
end)

describe("b64encode / b64decode", function()
  local vectors = { -- RFC 4648, section 10
    [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==",
    fooba = "Zm9vYmE=", foobar = "Zm9vYmFy",
  }

  it("matches the RFC 4648 vectors both ways", function()
    for plain, encoded in pairs(vectors) do
      assert.equal(encoded, rrpc.b64encode(plain))
      assert.equal(plain, rrpc.b64decode(encoded))
    end
  end)

  it("round-trips every byte value, NULs included", function()
    local all = {}
    for byte = 0, 255 do all[#all + 1] = string.char(byte) end
    local bytes = table.concat(all)
    assert.equal(bytes, rrpc.b64decode(rrpc.b64encode(bytes)))
  end)

  it("round-trips lengths around its internal chunk sizes and 256 KB of random bytes", function()
    math.randomseed(7)
    for _, n in ipairs { 1, 2, 3, 12287, 12288, 12289, 12290, 16383, 16384, 16385, 262144 } do
      local t = {}
      for i = 1, n do t[i] = string.char(math.random(0, 255)) end
      local bytes = table.concat(t)
      local encoded = rrpc.b64encode(bytes)
      assert.equal(4 * math.ceil(n / 3), #encoded)
      assert.is_nil(encoded:find("[^A-Za-z0-9+/=]"))
      assert.equal(bytes, rrpc.b64decode(encoded), "length " .. n)
    end
  end)

  it("is strict: rejects malformed input with nil and a reason", function()
    local bad = {
      ["Zg="] = "length is not a multiple of 4",
      ["Zm9"] = "length is not a multiple of 4",
      ["Zm9v\n"] = "length is not a multiple of 4",
      [" Zm9"] = "character outside the Base64 alphabet",
      ["Zm-v"] = "character outside the Base64 alphabet",   -- URL-safe alphabet
      ["Zm_v"] = "character outside the Base64 alphabet",
      ["Zm9\0"] = "character outside the Base64 alphabet",
      ["=Zm9"] = "padding before the end",
      ["Zm=v"] = "padding before the end",
      ["Z==="] = "padding before the end",
      ["Zh=="] = "non-zero bits in padding",               -- not the canonical "Zg=="
      ["Zm9=" ] = "non-zero bits in padding",
    }
    for input, reason in pairs(bad) do
      local bytes, err = rrpc.b64decode(input)
      assert.is_nil(bytes, input)
      assert.equal("invalid Base64: " .. reason, err, input)
    end
  end)

  it("rejects what is not a string, naming the argument", function()
    assert.has_error(function() rrpc.b64encode(nil) end,
      "bad argument #1 to 'b64encode' (string expected, got nil)")
    assert.has_error(function() rrpc.b64decode(12) end,
      "bad argument #1 to 'b64decode' (string expected, got number)")
  end)
end)

describe("decode_response with kinds", function()
  local core = require "rrpc.core"
  local KINDS = { RequestId = "string", Success = "boolean", MessageId = "string" }

  it("says whether every member it names is of its Lua type, keeping the MessageId exact", function()
    local doc, typed = core.decode_response('{"RequestId":"r","Success":true,"MessageId":9223372036854775807,'
      .. '"Other":[1,{"Success":"nested, not top-level"}]}', KINDS)
    assert.is_true(typed)
    assert.equal("9223372036854775807", doc.MessageId)
    assert.equal("r", doc.RequestId)
  end)

  it("tells the digits of a 64-bit integer as the kind \"digits\", up to the largest", function()
    local DIGITS = { MessageId = "digits" }
    for body, well in pairs {
      ['{"MessageId":9223372036854775807}'] = true, ['{"MessageId":"42"}'] = true, ['{"MessageId":0}'] = true,
      ['{"MessageId":9223372036854775808}'] = false, ['{"MessageId":99999999999999999999}'] = false,
      ['{"MessageId":-5}'] = false, ['{"MessageId":"4a"}'] = false, ['{"MessageId":""}'] = false,
      ['{"MessageId":1.5}'] = false, ['{"MessageId":null}'] = false, ['{"MessageId":true}'] = false,
      ['{"Other":1}'] = true,
    } do
      assert.equal(well, select(2, core.decode_response(body, DIGITS)), body)
    end
    -- the same check, for the ordered field checks: any value
    assert.is_true(core.is_int64_digits("9223372036854775807"))
    assert.is_false(core.is_int64_digits("9223372036854775808"))
    for _, v in ipairs { 5, true, {}, "", " 1", "1 " } do assert.is_false(core.is_int64_digits(v)) end
    assert.is_false(core.is_int64_digits(nil))
    assert.has_error(function() core.is_int64_digits() end, "bad argument #1 to 'is_int64_digits' (value expected)")
  end)

  it("finds the MessageId's digits past strings that end in backslashes or hold escaped quotes", function()
    for _, body in ipairs {
      [[{"Note":"ends in a backslash \\","MessageId":9007199254740993}]],
      [[{"Note":"\\\\","MessageId":9007199254740993}]],
      [[{"Note":"a quoted \"MessageId\":1 inside","MessageId":9007199254740993}]],
      [[{"Note":"\\\"MessageId\":5","MessageId":9007199254740993}]],
      [[{"MessageId":9007199254740993,"Note":"\"MessageId\":7"}]],
      [[{"Message\u0049d":1,"Payload":"a\/b\/c==","MessageId":9007199254740993}]],
    } do
      local doc = assert(core.decode_response(body), body)
      assert.equal("9007199254740993", doc.MessageId, body)
    end
  end)

  it("is false for a member of another type, or JSON null, wherever it comes in the document", function()
    for _, body in ipairs {
      '{"Success":"true"}', '{"RequestId":"r","Success":1}', '{"RequestId":null}',
      '{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"RequestId":7}',
    } do
      local doc, typed = core.decode_response(body, KINDS)
      assert.is_table(doc, body)
      assert.is_false(typed, body)
    end
    -- a member the kinds do not name, or absent ones, leave it true
    assert.is_true(select(2, core.decode_response('{"Anything":null,"Other":5}', KINDS)))
    assert.is_true(select(2, core.decode_response('{}', KINDS)))
  end)

  it("answers without kinds as before: the document alone", function()
    assert.equal(1, select("#", core.decode_response('{"Success":1}')))
    local doc, why = core.decode_response('[1]', KINDS)
    assert.is_nil(doc)
    assert.equal("invalid JSON (not an object)", why)
  end)

  it("refuses kinds that are not a table, naming the argument", function()
    assert.has_error(function() core.decode_response("{}", "string") end,
      "bad argument #2 to 'decode_response' (table expected, got string)")
  end)
end)
