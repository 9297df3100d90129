-- The sandbox every script and function runs in (Lua 5.1, loaded once per Lua state by
-- shaledb.server.exec.scripting). This chunk runs with the full standard library; what it
-- hands out is only the whitelist below, behind read-only proxies:
--   * no os, io, require, package, loadfile, dofile, loadstring, debug, getfenv/setfenv,
--     coroutine (a count hook is per coroutine in Lua 5.1: a coroutine would run unhooked,
--     past SCRIPT KILL), print, module, newproxy, collectgarbage;
--   * every shared table (string, math, table, bit, cjson, cmsgpack, struct, redis) is a
--     read-only proxy, and rawset refuses proxies and the script's globals: Redis 7's
--     "Attempt to modify a readonly table";
--   * each call gets a fresh globals table whose reads of unknown names and every write
--     fail, so nothing a script does is seen by the next one;
--   * the string metatable is hidden (getmetatable('') is false): it would otherwise hand
--     out the real, writable string table.
-- The arguments are the Python functions the library is built on (see scripting.py).
local pycall, pycall_raise, pylog, pysha1, pyhook, pyjson_encode, pyjson_decode, pymp_pack, pymp_unpack,
      pybit, pystruct_pack, pystruct_unpack, pystruct_size, pysetresp, pyacl_check,
      null_key, pyunlimit, pystr = ...

local error, type, tostring, setmetatable, rawset, select, unpack, pairs, pcall =
      error, type, tostring, setmetatable, rawset, select, unpack, pairs, pcall
local sethook, getinfo, setfenv, xpcall = debug.sethook, debug.getinfo, setfenv, xpcall
local loadstring, tconcat, getfenv, strbyte = loadstring, table.concat, getfenv, string.byte
local strsub, strfind, getmetatable = string.sub, string.find, getmetatable
local sandbox_source = getinfo(1, "S").source

-- Python objects (redis.call, a redis.call error) share lupa's metatable. Its __index,
-- __newindex and __tostring are C functions that convert values while holding the GIL,
-- outside any protected call: at lua-max-memory a refused allocation there hangs the server
-- (scripting.py, "the Lua state's memory"). Scripts have no use for Python attributes
-- (the attribute filter refuses them all): index and assignment fail in Lua, and tostring
-- goes through a guarded Python callback. __call and __gc stay lupa's.
do
    local pymeta = debug.getmetatable(pycall)
    local function no_attributes()
        error("Python attributes are not accessible from a script", 2)
    end
    pymeta.__index = no_attributes
    pymeta.__newindex = no_attributes
    pymeta.__tostring = function(o) return pystr(o) end
    pymeta.__metatable = false
end
-- (The bootstrap's globals are cleared once it ran: everything used later is a local.)

local protected = setmetatable({}, {__mode = "k"})

local function readonly_error()
    error("Attempt to modify a readonly table", 2)
end

-- What getmetatable answers for a protected table: a read-only stand-in, so that
-- `getmetatable(_G).__index = ...` fails as Redis' does.
local readonly_meta = setmetatable({}, {__newindex = readonly_error, __metatable = false})
protected[readonly_meta] = true

local function readonly(t)
    local proxy = {}
    protected[proxy] = true
    return setmetatable(proxy, {__index = t, __newindex = readonly_error, __metatable = false})
end

local function copy(t)
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    return c
end

-- redis.call / redis.pcall: Python runs the command (ACL, flags, the keyspace transaction).
-- redis.call is the Python callable itself, not a Lua wrapper: `return redis.call(...)` is
-- then no Lua tail call, so an error still knows the script's line. Its error is a Python
-- exception (a userdata here) whose text starts with error_mark; to_error_table turns it
-- into Redis' {err=...} wherever the script or the sandbox catches it.
local call = pycall_raise
local error_mark = "\0redis.call:"
local function to_error_table(e)
    if type(e) == "userdata" then
        local text = tostring(e)
        if strsub(text, 1, #error_mark) == error_mark then
            return {err = strsub(text, #error_mark + 1)}
        end
        return {err = "ERR " .. text}
    end
    return e
end

local function pcall_(...)
    local ok, value = pycall(...)
    if not ok then return {err = value} end
    return value
end

local redis = {
    call = call,
    pcall = pcall_,
    -- As Redis' luaPushErrorBuff: "-CODE msg" / "CODE msg" keep their code; a message of
    -- one word gets the generic ERR code.
    error_reply = function(msg)
        if type(msg) ~= "string" then error("wrong number or type of arguments", 2) end
        if strsub(msg, 1, 1) == "-" then msg = strsub(msg, 2) end
        if not strfind(msg, " ", 1, true) then msg = "ERR " .. msg end
        return {err = msg}
    end,
    status_reply = function(msg)
        if type(msg) ~= "string" then error("wrong number or type of arguments", 2) end
        return {ok = msg}
    end,
    sha1hex = function(...)
        if select("#", ...) ~= 1 then error("wrong number of arguments", 2) end
        return pysha1(tostring((...)))
    end,
    log = function(level, ...)
        if type(level) ~= "number" or select("#", ...) == 0 then
            error("redis.log() requires two arguments or more.", 2)
        end
        local parts = {}
        for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
        pylog(level, tconcat(parts, " "))
    end,
    setresp = function(v)
        if v ~= 2 and v ~= 3 then error("RESP version must be 2 or 3.", 2) end
        pysetresp(v)
    end,
    acl_check_cmd = function(...)
        local ok, value = pyacl_check(...)
        if ok == nil then error(value, 2) end
        return ok
    end,
    set_repl = function() end,
    replicate_commands = function() return true end,
    breakpoint = function() return false end,
    debug = function() end,
    LOG_DEBUG = 0, LOG_VERBOSE = 1, LOG_NOTICE = 2, LOG_WARNING = 3,
    REPL_NONE = 0, REPL_SLAVE = 1, REPL_REPLICA = 1, REPL_AOF = 2, REPL_ALL = 3,
    REDIS_VERSION = "7.0.15", REDIS_VERSION_NUM = 0x07000f,
}

-- Python helpers answer (true, values...) or (false, message): raise the message here, in
-- Lua, at the caller's line.
local maxn = table.maxn
local function wrap(pyfn, ...)
    local bound = {...}
    local nbound = select("#", ...)
    return function(...)
        local res
        if nbound == 0 then res = {pyfn(...)} else res = {pyfn(unpack(bound, 1, nbound), ...)} end
        if not res[1] then error(res[2], 2) end
        return unpack(res, 2, maxn(res))
    end
end

-- bit (LuaBitOp's API), on 32-bit signed results as LuaBitOp gives them.
local bit = {}
for _, name in ipairs({"tobit", "tohex", "bnot", "band", "bor", "bxor", "lshift", "rshift",
                       "arshift", "rol", "ror", "bswap"}) do
    bit[name] = wrap(pybit, name)
end

-- cjson.null: a unique read-only value Python recognises by a key only it asks for.
local cjson_null = setmetatable({}, {
    __index = function(_, k) if k == null_key then return true end end,
    __newindex = readonly_error, __metatable = false,
})
protected[cjson_null] = true
local json_encode, json_decode = wrap(pyjson_encode), wrap(pyjson_decode)
-- cjson's settings: reset before every run (lua-cjson keeps them in the state: one script
-- would change the next one's JSON).
local json_cfg = {}
local function json_defaults()
    json_cfg.encode_depth, json_cfg.decode_depth, json_cfg.invalid = 1000, 1000, false
end
json_defaults()
local function setting(key)
    return function(v)
        if v ~= nil then json_cfg[key] = v end
        return json_cfg[key]
    end
end
local cjson = {
    encode = function(v)
        return json_encode(v, cjson_null, json_cfg.encode_depth, json_cfg.invalid)
    end,
    decode = function(s)
        if type(s) ~= "string" then error("bad argument #1 to 'decode' (string expected)", 2) end
        return json_decode(s, cjson_null, json_cfg.decode_depth)
    end,
    null = cjson_null,
    encode_keep_buffer = function() end,
    encode_max_depth = setting("encode_depth"),
    decode_max_depth = setting("decode_depth"),
    encode_invalid_numbers = setting("invalid"),
    decode_invalid_numbers = function() end,
}

local mp_unpack = wrap(pymp_unpack)
local cmsgpack = {
    pack = wrap(pymp_pack, cjson_null),
    unpack = function(s) return mp_unpack(s, cjson_null, 0, -1, false) end,
    -- unpack_one(s, offset) / unpack_limit(s, limit, offset) -> next offset (-1 at the
    -- end), objects...
    unpack_one = function(s, offset) return mp_unpack(s, cjson_null, offset or 0, 1, true) end,
    unpack_limit = function(s, limit, offset)
        return mp_unpack(s, cjson_null, offset or 0, limit or 0, true)
    end,
}

local struct = {
    pack = wrap(pystruct_pack),
    unpack = wrap(pystruct_unpack),
    size = wrap(pystruct_size),
}

local string_ = copy(string)  -- (string.dump stays: the sandbox's loadstring refuses bytecode)

local base = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    pcall = function(f, ...)
        local res = {pcall(f, ...)}
        if not res[1] then res[2] = to_error_table(res[2]) end
        return unpack(res, 1, maxn(res))
    end,
    xpcall = function(f, h)
        return xpcall(f, function(e) return h(to_error_table(e)) end)
    end,
    setmetatable = function(t, mt)
        if protected[t] then error("Attempt to modify a readonly table", 2) end
        return setmetatable(t, mt)
    end,
    getmetatable = function(t)
        if protected[t] then return readonly_meta end
        return getmetatable(t)
    end,
    rawequal = rawequal, rawget = rawget, select = select,
    tonumber = tonumber, tostring = tostring, type = type, unpack = unpack,
    _VERSION = _VERSION,
    -- loadstring compiles into the caller's globals (not the real ones), and never
    -- bytecode: Lua 5.1 does not verify it, a crafted chunk corrupts the VM.
    loadstring = function(code, name)
        if type(code) == "string" and strbyte(code, 1) == 27 then
            return nil, "binary chunks are not allowed"
        end
        local f, msg = loadstring(code, name)
        if f then setfenv(f, getfenv(2)) end
        return f, msg
    end,
    rawset = function(t, k, v)
        if protected[t] then error("Attempt to modify a readonly table", 2) end
        return rawset(t, k, v)
    end,
    string = readonly(string_), math = readonly(copy(math)), table = readonly(copy(table)),
    bit = readonly(bit), cjson = readonly(cjson), cmsgpack = readonly(cmsgpack),
    struct = readonly(struct), redis = readonly(redis),
}

-- getmetatable('') would hand out the real string table: hide the metatable.
local string_mt = debug.getmetatable("")
string_mt.__metatable = false

-- A script's globals: KEYS, ARGV, the library; reading any other name or writing at all
-- fails as in Redis 7.
local function new_env(keys, argv)
    local env = {}
    protected[env] = true
    setmetatable(env, {
        __index = function(_, k)
            if k == "KEYS" then return keys end
            if k == "ARGV" then return argv end
            if k == "_G" then return env end
            local v = base[k]
            if v == nil then
                error("Script attempted to access nonexistent global variable '"
                      .. tostring(k) .. "'", 2)
            end
            return v
        end,
        __newindex = readonly_error,
        __metatable = false,
    })
    return env
end

local function handler(e)
    e = to_error_table(e)
    if type(e) ~= "table" then e = {err = "ERR " .. tostring(e)} end
    -- The script's own frame: skip C functions and this sandbox's wrappers.
    local level = 2
    local i = getinfo(level, "Sl")
    while i and (i.what == "C" or i.source == sandbox_source) do
        level = level + 1
        i = getinfo(level, "Sl")
    end
    -- (A wrapper called in tail position left no frame of the script: no location then.)
    if i and i.what ~= "tail" and e.source == nil then
        e.source = i.source
        e.line = i.currentline
    end
    return e
end

-- The count hook: Python answers whether SCRIPT KILL (or a load's deadline) stops the run.
-- From then on it fires at every instruction, so a pcall in the script cannot hold it;
-- Python stops answering yes once the run is over (the error may then escape the sandbox's
-- own code: Python catches it).
local function hook()
    if pyhook() then
        sethook(hook, "", 1)
        error({err = "ERR Script killed by user with SCRIPT KILL..."})
    end
end

local function clear_hook()
    sethook()
end

-- Compile a script body into a function (nil, message on a syntax error).
local function compile(body, name)
    local f, msg = loadstring(body, name)
    return f, msg or false  -- always two values: Python unpacks a tuple
end

-- Run a compiled script with KEYS and ARGV -> ok, result-or-error-table.
local function run(f, keys, argv, hook_every)
    json_defaults()
    setfenv(f, new_env(keys, argv))
    sethook(hook, "", hook_every)
    local ok, res = xpcall(f, handler)
    sethook()
    pyunlimit()  -- lupa converts the results next (scripting.py: _room)
    return ok, res
end

-- Load a function library (FUNCTION LOAD): its body runs once with only
-- redis.register_function (and redis.log) available; its functions later see the whole
-- library through the same globals table (``loading`` switches what ``redis`` is).
local loading = false
local function load_library(body, name, register)
    local f, msg = loadstring(body, name)
    if not f then
        pyunlimit()
        return false, {err = "ERR Error compiling function: " .. msg}
    end
    -- What a library's top level sees of redis (Redis 7.0: no call, setresp, set_repl ...;
    -- reading them fails as an unknown global does).
    local lib_api = {
        register_function = wrap(register),
        log = redis.log, LOG_DEBUG = 0, LOG_VERBOSE = 1, LOG_NOTICE = 2, LOG_WARNING = 3,
        REDIS_VERSION = redis.REDIS_VERSION, REDIS_VERSION_NUM = redis.REDIS_VERSION_NUM,
    }
    local lib_redis = {}
    protected[lib_redis] = true
    setmetatable(lib_redis, {
        __index = function(_, k)
            local v = lib_api[k]
            if v == nil then
                error("Script attempted to access nonexistent global variable '"
                      .. tostring(k) .. "'", 2)
            end
            return v
        end,
        __newindex = readonly_error, __metatable = false,
    })
    local env = {}
    protected[env] = true
    setmetatable(env, {
        __index = function(_, k)
            if k == "redis" then return loading and lib_redis or base.redis end
            if k == "_G" then return env end
            local v = base[k]
            if v == nil then
                error("Script attempted to access nonexistent global variable '"
                      .. tostring(k) .. "'", 2)
            end
            return v
        end,
        __newindex = readonly_error,
        __metatable = false,
    })
    setfenv(f, env)
    loading = true
    sethook(hook, "", 100000)
    local ok, res = xpcall(f, handler)
    sethook()
    loading = false
    pyunlimit()
    return ok, res
end

-- Run a registered function with the keys and arguments tables.
local function run_function(f, keys, argv, hook_every)
    json_defaults()
    sethook(hook, "", hook_every)
    local ok, res = xpcall(function() return f(keys, argv) end, handler)
    sethook()
    pyunlimit()
    return ok, res
end

return compile, run, load_library, run_function, clear_hook
