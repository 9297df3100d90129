"""ACL: SETUSER GETUSER DELUSER LIST USERS WHOAMI CAT LOG SAVE LOAD GENPASS DRYRUN HELP
(Redis 7)."""

from __future__ import annotations

import secrets
from typing import Any

from ..admin.acl import CATEGORIES, DEFAULT_USER, AclRuleError
from ..errors import CommandError
from ..net.protocol import OK, SetReply, Status
from . import CommandFamily, Context, parse_int, wrong_arity
from .pubsub import kill_unpermitted

FAMILY = CommandFamily()

_ADMIN = "admin slow dangerous"
_SUBCOMMANDS = {
    "cat": "slow", "deluser": _ADMIN, "genpass": "slow", "getuser": _ADMIN, "list": _ADMIN,
    "load": _ADMIN, "log": _ADMIN, "save": _ADMIN, "setuser": _ADMIN, "users": _ADMIN,
    "whoami": "slow", "dryrun": _ADMIN, "help": "slow",
}
#: Subcommands Redis gives a minimum arity: too many arguments is a syntax error, not an
#: arity error (as Redis' replies differ).
_VARIADIC = frozenset((b"cat", b"genpass", b"log"))
ACL_HELP = (
    "ACL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CAT [<category>]",
    "    List all commands that belong to <category>, or all command categories",
    "    when no category is specified.",
    "DELUSER <username> [<username> ...]",
    "    Delete a list of users.",
    "DRYRUN <username> <command> [<arg> ...]",
    "    Returns whether the user can execute the given command without executing the command.",
    "GETUSER <username>",
    "    Get the user's details.",
    "GENPASS [<bits>]",
    "    Generate a secure 256-bit user password. The optional `bits` argument can",
    "    be used to specify a different size.",
    "LIST",
    "    Show users details in config file format.",
    "LOAD",
    "    Reload users from the ACL file.",
    "LOG [<count> | RESET]",
    "    Show the ACL log entries.",
    "SAVE",
    "    Save the current config to the ACL file.",
    "SETUSER <username> <attribute> [<attribute> ...]",
    "    Create or modify a user with the specified attributes.",
    "USERS",
    "    List all the registered usernames.",
    "WHOAMI",
    "    Return the current connection username.",
    "HELP",
    "    Print this help.",
)
#: Most bits ACL GENPASS hands out at once.
GENPASS_MAX_BITS = 4096


def _no_aclfile() -> CommandError:
    # Redis' words first (clients match them), then how to configure one here.
    return CommandError("This Redis instance is not configured to use an ACL file. Set "
                        "aclfile in ShaleDB's config file (or --aclfile) to save and load "
                        "users.")


@FAMILY.command("acl", -2, "noscript loading stale", _ADMIN, subcommands=_SUBCOMMANDS)
def acl(ctx: Context, argv: list[bytes]) -> Any:
    """ACL SETUSER | GETUSER | DELUSER | LIST | USERS | WHOAMI | CAT | LOG | SAVE | LOAD |
    GENPASS"""
    sub = argv[1].lower()
    n = len(argv)
    server = ctx.services
    store = server.acl
    if sub == b"setuser" and n >= 3:
        try:
            changed = store.set_user(argv[2], argv[3:])
        except AclRuleError as exc:
            raise CommandError(str(exc)) from None
        kill_unpermitted(server, changed, ctx.client)  # as Redis 7: lost channels end them
        return OK
    if sub == b"getuser" and n == 3:
        user = store.users.get(argv[2])
        if user is None:
            return None
        return {
            "flags": SetReply(f.encode() for f in user.flags()),  # as Redis 7 sends them
            "passwords": [d.hex().encode() for d in user.passwords],
            **user.reply(),
            "selectors": [s.reply() for s in user.selectors],
        }
    if sub == b"dryrun" and n >= 4:
        return _dryrun(ctx, argv)
    if sub == b"help" and n == 2:
        return [Status(line.encode()) for line in ACL_HELP]
    if sub == b"deluser" and n >= 3:
        if DEFAULT_USER in argv[2:]:
            raise CommandError("The 'default' user cannot be removed")
        deleted = [store.users.pop(name) for name in dict.fromkeys(argv[2:])
                   if name in store.users]
        server.disconnect_users(deleted, ctx.client)
        return len(deleted)
    if sub == b"list" and n == 2:
        return [u.describe() for u in store.users.values()]
    if sub == b"users" and n == 2:
        return list(store.users)
    if sub == b"whoami" and n == 2:
        return ctx.client.user.name
    if sub == b"cat" and n in (2, 3):
        if n == 2:
            return [c.encode() for c in CATEGORIES]
        units = store.index.by_category.get(argv[2].lower().decode("latin-1"))
        if units is None:
            raise CommandError(
                f"Unknown category '{argv[2][:128].decode('utf-8', 'replace')}'")
        return [u.encode() for u in sorted(units)]
    if sub == b"log" and n in (2, 3):
        if n == 3 and argv[2].lower() == b"reset":
            store.log.clear()
            return OK
        count = 10 if n == 2 else parse_int(argv[2])
        if count < 0:
            raise CommandError("value is out of range, must be positive")
        return store.log_reply(count)
    if sub in (b"save", b"load") and n == 2:
        path = server.config.aclfile
        if path is None:
            raise _no_aclfile()
        if sub == b"save":
            try:
                store.save_file(path)
            except OSError as exc:
                raise CommandError(f"There was an error trying to save the ACLs: "
                                   f"{exc.strerror}") from None
            return OK
        try:
            users = store.load_file(path)
        except AclRuleError as exc:
            raise CommandError(str(exc)) from None
        server.install_users(users, ctx.client)
        return OK
    if sub == b"genpass" and n in (2, 3):
        bits = 256 if n == 2 else parse_int(argv[2])
        if not 0 < bits <= GENPASS_MAX_BITS:
            raise CommandError(f"ACL GENPASS argument must be the number of bits for the "
                               f"output password, a positive number up to {GENPASS_MAX_BITS}")
        return secrets.token_hex((bits + 7) // 8)[:(bits + 3) // 4].encode()
    if sub.decode("latin-1") in _SUBCOMMANDS and sub not in _VARIADIC:
        raise wrong_arity("acl|" + sub.decode("latin-1"))
    if sub in _VARIADIC:
        raise CommandError(f"unknown subcommand or wrong number of arguments for "
                           f"'{argv[1][:128].decode('utf-8', 'replace')}'. Try ACL HELP.")
    raise CommandError(f"unknown subcommand '{argv[1][:128].decode('utf-8', 'replace')}'. "
                       "Try ACL HELP.")


def _dryrun(ctx: Context, argv: list[bytes]) -> Any:
    """ACL DRYRUN user command [arg ...]: OK, or why the user may not run it (a bulk
    string, as Redis), without running it or writing the ACL log."""
    user = ctx.services.acl.users.get(argv[2])
    if user is None:
        raise CommandError(f"User '{argv[2][:128].decode('utf-8', 'replace')}' not found")
    cmd = ctx.services.dispatcher.table.get(argv[3].lower())
    if cmd is None:
        raise CommandError(f"Command '{argv[3][:128].decode('utf-8', 'replace')}' not found")
    call = argv[3:]
    if not cmd.arity_ok(len(call)):
        raise wrong_arity(ctx.services.acl.index.unit(cmd, call))
    denial = ctx.services.acl.evaluate(user, cmd, call)
    return OK if denial is None else denial.dryrun().encode()
