"""Encryption at rest: the master key, the database's key file (``KEYRING``), per-file keys
and the AES-256-GCM transform of records and blocks (docs/security.md says what it protects
against; docs/format.md, "Encrypted databases", has every byte).

Keys, from the outside in:

- The **master key** (32 bytes) belongs to the user: handed to ``shaledb.open``
  (``encryption_key`` or ``encryption_key_file``), never stored in the database. HKDF-SHA256
  derives three values from it: the *key id* (8 bytes, printed in messages so that people
  can tell which key a database needs), the *wrapping key* (encrypts data keys) and the
  *check key* (authenticates ``KEYRING``).
- **Data keys** (32 random bytes, numbered 1, 2, ...) live in ``KEYRING``, each wrapped with
  AES-256-GCM under the wrapping key. Rotating the master key re-wraps them and rewrites
  nothing else. One is *active*: new files use it. Making a fresh one active
  (``rotate_data_key``) lets compaction re-encrypt the tables with it.
- A **file key** per file: HKDF-SHA256 of its data key, with the file's random 16-byte salt
  (stored in its header) and, as context, the kind of file and its number.

A WAL record, a MANIFEST edit or a table block is sealed with AES-256-GCM under its file's
key. The nonce is the offset where the record or block starts (8 bytes, little-endian) and
4 zero bytes. A table block's associated data names the file number, the offset, what the
block is (data, filter, index, properties) and its compression byte, so a block moved to
another place, table or role fails authentication. A log record has no associated data: its
file key already binds the file's number and kind (WAL or MANIFEST), its nonce the offset,
and a log holds records of one kind only (``seal_record``; the associated data would cost
a fifth of a small record's sealing, on every write).

Why a (key, nonce) pair never repeats: a file key belongs to one file (a fresh random salt
per file, and its number and kind in the derivation), a file is written once, front to back,
by one writer, and never reopened for appending (recovery copies records into a *new* WAL
segment, compaction writes new tables), and within a file no two records or blocks start at
the same offset. :class:`FileCipher` enforces the last point: a writer's offsets must grow
(except after :meth:`FileCipher.discard`: a WAL record sealed for a write that failed before
any byte of it was written may be sealed again; only one ciphertext per offset reaches the
file).

Key material: keys are held in ``bytearray`` objects that :meth:`close` zeroes. What Python
cannot promise (docs/security.md): the ``cryptography`` objects (AESGCM, HKDF) keep their own
copies until they are garbage collected, immutable ``bytes`` made on the way cannot be
wiped, and memory may be swapped out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from collections.abc import Callable
from typing import Any

import crc32c as _crc32c
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import CorruptionError, EncryptionError, IncompatibleFormatError
from .vfs import read_secret_file

KEY_SIZE = 32
SALT_SIZE = 16
TAG_SIZE = 16
CIPHER = "AES-256-GCM"
#: Version of the KEYRING layout.
KEYRING_FORMAT = 1

#: Kinds of file (in the file key derivation).
WAL_FILE, MANIFEST_FILE, TABLE_FILE = 1, 2, 3
#: What a sealed table block is (in its associated data; 1 and 2 name WAL and MANIFEST
#: records, which are sealed without associated data: ``FileCipher.seal_record``).
WAL_RECORD, MANIFEST_RECORD, DATA_BLOCK, FILTER_BLOCK, INDEX_BLOCK, PROPERTIES_BLOCK = range(1, 7)

_AAD = struct.Struct("<QQBB")  # file number, offset, kind, compression byte
_pack_aad = _AAD.pack
_FILE_INFO = struct.Struct("<BQ")  # file kind, file number
_CRC_PREFIX = b"crc32c "
crc32c = _crc32c.crc32c

#: Tests set this to ``fn(file_key_fingerprint, nonce)`` to see every nonce used to encrypt
#: (the nonce-uniqueness test); None in production (one comparison per encryption).
nonce_observer: Callable[[bytes, bytes], None] | None = None


def random_bytes(n: int) -> bytes:
    """``n`` random bytes for keys, salts and wrapping nonces (the golden-file script
    replaces this function to make its files reproducible)."""
    return os.urandom(n)


def _hkdf(ikm: bytes | bytearray, info: bytes, length: int = KEY_SIZE,
          salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _zero(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


class Unauthentic(CorruptionError):
    """Sealed bytes failed authentication: changed after they were written (with their
    checksum recomputed), moved from another place, file or role, or sealed with a data key
    the keyring holds under the same id but with other bytes."""


# -- the master key ---------------------------------------------------------------------------

class MasterKey:
    """The user's 32-byte key: derives the key id, the wrapping key and the check key.
    ``close()`` zeroes the copy it holds."""

    __slots__ = ("_key", "key_id")

    def __init__(self, key: bytes | bytearray | memoryview) -> None:
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError(f"an encryption key is bytes, not {type(key).__name__}")
        if len(key) != KEY_SIZE:
            raise EncryptionError(f"an encryption key is {KEY_SIZE} bytes (AES-256), not "
                                  f"{len(key)}; make one with `openssl rand -hex 32`")
        self._key = bytearray(key)
        #: Identifies the key (one-way: safe to print); recorded in KEYRING.
        self.key_id = _hkdf(self._key, b"shaledb master key id", 8).hex()

    def _wrapper(self) -> AESGCM:
        return AESGCM(_hkdf(self._key, b"shaledb key wrapping"))

    def derive(self, info: bytes, *, salt: bytes | None = None,
               length: int = KEY_SIZE) -> bytes:
        """A key derived from this one with HKDF-SHA256 for the purpose ``info`` (a backup
        repository's keys: backup/sealing.py). Distinct ``info`` values give independent
        keys; none of the ones used here ("shaledb master key id", "shaledb key wrapping",
        "shaledb keyring check") may be passed."""
        if info in (b"shaledb master key id", b"shaledb key wrapping",
                    b"shaledb keyring check"):
            raise ValueError(f"{info!r} is reserved for the database's own keys")
        return _hkdf(self._key, info, length, salt)

    def check(self, body: bytes) -> str:
        """The check value of a KEYRING body: HMAC-SHA256 under the check key, 16 bytes."""
        key = _hkdf(self._key, b"shaledb keyring check")
        return hmac.new(key, body, hashlib.sha256).digest()[:16].hex()

    def close(self) -> None:
        """Zero the key bytes held here."""
        _zero(self._key)

    def __enter__(self) -> MasterKey:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MasterKey id={self.key_id}>"


_HEX = {c: i for i, c in enumerate(b"0123456789abcdef")}
_HEX.update({c: i + 10 for i, c in enumerate(b"ABCDEF")})


def parse_key_bytes(raw: bytearray, where: str) -> bytearray:
    """A key file's content as the 32-byte key: exactly 32 raw bytes, or 64 hexadecimal
    characters (a final newline and surrounding blanks allowed). The result is a new
    bytearray; ``raw`` is left for the caller to zero.

    32 bytes that are all printable ASCII are refused: that is text (32 hex digits of a
    16-byte key, a passphrase), not a raw key; 32 random bytes are all printable with
    probability (95/256)^32, about 2^-46."""
    if len(raw) == KEY_SIZE:
        if all(0x20 <= b < 0x7F for b in raw):
            raise EncryptionError(
                f"{where} holds 32 characters of text (32 hexadecimal digits are a 16-byte "
                "key; a passphrase is not a key), not 32 random bytes: make a key with "
                "`openssl rand -hex 32 > FILE; chmod 600 FILE` (64 hexadecimal characters)")
        return bytearray(raw)
    start, end = 0, len(raw)
    while start < end and raw[start] in b" \t\r\n":
        start += 1
    while end > start and raw[end - 1] in b" \t\r\n":
        end -= 1
    if end - start == 2 * KEY_SIZE and all(raw[i] in _HEX for i in range(start, end)):
        out = bytearray(KEY_SIZE)
        for i in range(KEY_SIZE):
            out[i] = _HEX[raw[start + 2 * i]] << 4 | _HEX[raw[start + 2 * i + 1]]
        return out
    raise EncryptionError(
        f"{where} must hold a 32-byte key: 32 raw bytes or 64 hexadecimal characters (make "
        f"one with `openssl rand -hex 32 > FILE; chmod 600 FILE`), not {len(raw)} bytes")


def read_key_file(path: str) -> MasterKey:
    """The master key in the file ``path`` (refused when group or others may access it)."""
    try:
        raw = read_secret_file(path, 256)
    except PermissionError as exc:
        raise EncryptionError(str(exc)) from None
    except FileNotFoundError:
        raise EncryptionError(f"key file {path!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise EncryptionError(f"cannot read key file {path!r}: {exc}") from None
    try:
        key = parse_key_bytes(raw, f"key file {path!r}")
    finally:
        _zero(raw)
    try:
        return MasterKey(key)
    finally:
        _zero(key)


def master_key(key: bytes | bytearray | memoryview | None,
               key_file: str | None) -> MasterKey | None:
    """The master key from ``shaledb.open``'s ``encryption_key`` or ``encryption_key_file``
    (None when neither is given)."""
    if key is not None and key_file is not None:
        raise EncryptionError("give encryption_key or encryption_key_file, not both")
    if key_file is not None:
        return read_key_file(key_file)
    if key is not None:
        return MasterKey(key)
    return None


# -- per-file keys ----------------------------------------------------------------------------

def nonce_reuse(cipher: FileCipher, offset: int) -> AssertionError:
    """The error of sealing ``offset`` of ``cipher``'s file a second time (a bug)."""
    return AssertionError(f"refusing to reuse a nonce: offset {offset} of file "
                          f"{cipher.number} was sealed before (a bug)")


class FileCipher:
    """The AES-256-GCM key of one file, sealing and opening its records or blocks by the
    offset where they start. A cipher made for writing refuses an offset that is not past the
    last one it sealed (a nonce is never used twice)."""

    __slots__ = ("_aead", "_encrypt", "_decrypt", "number", "file_kind", "key_id", "salt",
                 "next_offset", "fingerprint", "encrypt_record")

    def __init__(self, file_key: bytes, file_kind: int, number: int, key_id: int,
                 salt: bytes) -> None:
        self._aead = AESGCM(file_key)
        # Bound once: a WAL record is sealed per write, and every lookup shows in a put.
        self._encrypt = self._aead.encrypt
        self._decrypt = self._aead.decrypt
        self.file_kind = file_kind
        self.number = number
        self.key_id = key_id
        self.salt = salt
        #: The lowest offset that may still be sealed (the nonce guard).
        self.next_offset = 0
        self.fingerprint = (hashlib.sha256(file_key).digest()[:16]
                            if nonce_observer is not None else b"")
        #: ``encrypt(nonce, plain, None)`` without the nonce guard, for the one caller that
        #: keeps the guard itself, inline, on the write path: ``LogWriter.sealed_framer``
        #: (a call less per put). Everything else seals through :meth:`seal_record`.
        self.encrypt_record = self._encrypt

    def seal(self, plain: bytes | bytearray | memoryview, offset: int, kind: int,
             code: int = 0) -> bytes:
        """``plain`` encrypted and authenticated as the bytes of ``kind`` starting at
        ``offset`` of this file: ciphertext followed by the 16-byte tag."""
        if offset < self.next_offset:
            raise nonce_reuse(self, offset)
        self.next_offset = offset + 1
        nonce = offset.to_bytes(12, "little")
        if nonce_observer is not None:
            nonce_observer(self.fingerprint, nonce)
        sealed: bytes = self._encrypt(nonce, plain, _pack_aad(self.number, offset, kind, code))
        return sealed

    def seal_record(self, plain: bytes | bytearray | memoryview, offset: int) -> bytes:
        """A log record's payload sealed for ``offset`` (no associated data: the file key
        binds the file, the nonce the offset); the same nonce rule as :meth:`seal`. The
        write path's one call per write."""
        if offset < self.next_offset:
            raise nonce_reuse(self, offset)
        self.next_offset = offset + 1
        nonce = offset.to_bytes(12, "little")
        if nonce_observer is not None:
            nonce_observer(self.fingerprint, nonce)
        sealed: bytes = self._encrypt(nonce, plain, None)
        return sealed

    def discard(self, offset: int) -> None:
        """The bytes last sealed, for ``offset``, were dropped before any of them was written
        (the write that framed them failed first: no descriptor for the map): that offset
        may be sealed again. Only ciphertext that reaches the file counts as a nonce's use,
        and at most one record sealed for an offset ever does."""
        if offset != self.next_offset - 1:
            raise AssertionError(f"discarding offset {offset} of file {self.number}, but the "
                                 f"last one sealed was {self.next_offset - 1} (a bug)")
        self.next_offset = offset

    def open_record(self, sealed: bytes | bytearray | memoryview, offset: int) -> bytes:
        """The plain payload of what :meth:`seal_record` made (:class:`Unauthentic` when it
        was changed or moved)."""
        try:
            plain: bytes = self._decrypt(offset.to_bytes(12, "little"), sealed, None)
        except InvalidTag:
            raise Unauthentic(f"the record at offset {offset} of file {self.number} fails "
                              "authentication (changed, moved from another place or file, "
                              "or sealed with another key)") from None
        return plain

    def open(self, sealed: bytes | bytearray | memoryview, offset: int, kind: int,
             code: int = 0) -> bytes:
        """The plain bytes of what :meth:`seal` made; :class:`Unauthentic` when they were
        changed, moved or sealed with another key."""
        try:
            plain: bytes = self._decrypt(offset.to_bytes(12, "little"), sealed,
                                         _pack_aad(self.number, offset, kind, code))
        except InvalidTag:
            raise Unauthentic(f"bytes at offset {offset} of file {self.number} fail "
                              "authentication (changed, moved from another place or file, "
                              "or sealed with another key)") from None
        return plain

    def __repr__(self) -> str:
        return f"<FileCipher file={self.number} kind={self.file_kind} data_key={self.key_id}>"


class Keyring:
    """The unwrapped data keys of one database, by id, and the active one (new files)."""

    __slots__ = ("_keys", "active", "key_id")

    def __init__(self, keys: dict[int, bytearray], active: int, key_id: str) -> None:
        if active not in keys:
            raise CorruptionError(f"KEYRING names data key {active} as active, but holds no "
                                  "such key")
        self._keys = keys
        self.active = active
        #: The master key's id (informational here).
        self.key_id = key_id

    @property
    def ids(self) -> list[int]:
        """Ids of the data keys held."""
        return sorted(self._keys)

    def writer(self, file_kind: int, number: int) -> FileCipher:
        """The cipher of a new file: the active data key and a fresh random salt."""
        return self.reader(file_kind, number, self.active, random_bytes(SALT_SIZE))

    def reader(self, file_kind: int, number: int, key_id: int, salt: bytes) -> FileCipher:
        """The cipher of an existing file, from what its header records."""
        dek = self._keys.get(key_id)
        if dek is None:
            raise CorruptionError(f"file {number} was written with data key {key_id}, which "
                                  f"KEYRING does not hold (it holds {self.ids}): the file "
                                  "comes from another database, or KEYRING is an old copy")
        key = _hkdf(dek, b"shaledb file key" + _FILE_INFO.pack(file_kind, number), salt=salt)
        return FileCipher(key, file_kind, number, key_id, salt)

    def encode(self, master: MasterKey, keep: set[int] | None = None) -> bytes:
        """KEYRING content holding these data keys (only those in ``keep``, and the active
        one, when given) wrapped under ``master``."""
        keys = {i: k for i, k in self._keys.items()
                if keep is None or i in keep or i == self.active}
        return encode_keyring(master, keys, self.active)

    def export(self) -> tuple[int, str, list[tuple[int, bytes]]]:
        """The keys as plain data for a compaction worker (sent over its pipe only)."""
        return self.active, self.key_id, [(i, bytes(k)) for i, k in sorted(self._keys.items())]

    @classmethod
    def imported(cls, state: tuple[int, str, list[tuple[int, bytes]]]) -> Keyring:
        """The keyring :meth:`export` described."""
        active, key_id, keys = state
        return cls({i: bytearray(k) for i, k in keys}, active, key_id)

    def close(self) -> None:
        """Zero the data keys held here."""
        for k in self._keys.values():
            _zero(k)

    def __repr__(self) -> str:
        return f"<Keyring master={self.key_id} data_keys={self.ids} active={self.active}>"


# -- KEYRING ----------------------------------------------------------------------------------

def _canonical(info: dict[str, Any]) -> bytes:
    """What the check value covers: every field but ``check``, as compact sorted JSON."""
    body = {k: v for k, v in info.items() if k != "check"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _wrap_aad(key_id: int) -> bytes:
    return b"shaledb data key" + key_id.to_bytes(4, "little")


def encode_keyring(master: MasterKey, keys: dict[int, bytearray], active: int) -> bytes:
    """The content of a KEYRING holding ``keys`` wrapped under ``master``."""
    wrapper = master._wrapper()
    data_keys = []
    for i in sorted(keys):
        nonce = random_bytes(12)
        data_keys.append({"id": i, "wrapped": (nonce + wrapper.encrypt(
            nonce, bytes(keys[i]), _wrap_aad(i))).hex()})
    info: dict[str, Any] = {"format": KEYRING_FORMAT, "cipher": CIPHER,
                            "key_id": master.key_id, "active": active,
                            "data_keys": data_keys}
    info["check"] = master.check(_canonical(info))
    body = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    return body + b"%s%08x\n" % (_CRC_PREFIX, crc32c(body))


def new_keyring(master: MasterKey) -> tuple[Keyring, bytes]:
    """A keyring with one fresh data key, and the KEYRING content that holds it."""
    keys = {1: bytearray(random_bytes(KEY_SIZE))}
    return Keyring(keys, 1, master.key_id), encode_keyring(master, keys, 1)


def keyring_info(raw: bytes, dirpath: str) -> dict[str, Any]:
    """The KEYRING object, checked against its checksum line (no key needed):
    CorruptionError when damaged, IncompatibleFormatError when newer than this ShaleDB."""
    cut = raw.rfind(b"\n", 0, len(raw) - 1) + 1
    if not raw.endswith(b"\n") or not raw[cut:].startswith(_CRC_PREFIX):
        raise _damaged(dirpath, "its checksum line is missing")
    body = raw[:cut]
    if raw[cut:] != b"%s%08x\n" % (_CRC_PREFIX, crc32c(body)):
        raise _damaged(dirpath, "its checksum does not match")
    try:
        info = json.loads(body)
        if not isinstance(info, dict):
            raise TypeError("not a JSON object")
        version = int(info["format"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _damaged(dirpath, str(exc)) from exc
    if version > KEYRING_FORMAT:
        raise IncompatibleFormatError(
            f"KEYRING of {dirpath!r} has format {version}; this ShaleDB reads up to "
            f"{KEYRING_FORMAT}: upgrade ShaleDB")
    if info.get("cipher") != CIPHER or not isinstance(info.get("key_id"), str):
        raise _damaged(dirpath, "cipher or key_id is missing")
    return info


def _damaged(dirpath: str, why: str) -> CorruptionError:
    return CorruptionError(
        f"KEYRING of {dirpath!r} is damaged ({why}): without it nothing in the database can "
        "be decrypted; restore it from a backup of the database (it holds the wrapped data "
        "keys, never the master key)")


def wrong_key(dirpath: str, wanted: str, given: str) -> EncryptionError:
    """The error for a key that is not the database's."""
    return EncryptionError(
        f"wrong encryption key for {dirpath!r}: the database needs the key with id {wanted}, "
        f"the key given has id {given}; pass the database's key (encryption_key_file / "
        f"--encryption-key-file)")


def open_keyring(raw: bytes, master: MasterKey, dirpath: str) -> Keyring:
    """Unwrap the data keys of a KEYRING with ``master``: EncryptionError for another key,
    CorruptionError when the file was damaged or altered."""
    info = keyring_info(raw, dirpath)
    if info["key_id"] != master.key_id:
        raise wrong_key(dirpath, info["key_id"], master.key_id)
    check = info.get("check")
    if not isinstance(check, str) or not hmac.compare_digest(
            check, master.check(_canonical(info))):
        raise CorruptionError(
            f"KEYRING of {dirpath!r} was altered: its check value does not match the key "
            "(whose id it names); restore it from a backup of the database")
    wrapper = master._wrapper()
    keys: dict[int, bytearray] = {}
    try:
        for entry in info["data_keys"]:
            i = int(entry["id"])
            blob = bytes.fromhex(entry["wrapped"])
            keys[i] = bytearray(wrapper.decrypt(blob[:12], blob[12:], _wrap_aad(i)))
        active = int(info["active"])
    except (InvalidTag, ValueError, KeyError, TypeError) as exc:
        for k in keys.values():
            _zero(k)
        raise _damaged(dirpath, f"a data key does not unwrap: {exc!r}") from None
    return Keyring(keys, active, master.key_id)


def rewrap_keyring(raw: bytes, old: MasterKey, new: MasterKey, dirpath: str,
                   new_data_key: bool = False) -> bytes:
    """KEYRING content with the data keys of ``raw`` (unwrapped with ``old``) wrapped under
    ``new`` (which may be ``old``); with ``new_data_key``, plus a fresh active data key."""
    ring = open_keyring(raw, old, dirpath)
    keys = dict(ring._keys)
    try:
        active = ring.active
        if new_data_key:
            active = max(keys) + 1
            keys[active] = bytearray(random_bytes(KEY_SIZE))
        return encode_keyring(new, keys, active)
    finally:
        for k in keys.values():
            _zero(k)


__all__ = ["CIPHER", "DATA_BLOCK", "FILTER_BLOCK", "INDEX_BLOCK", "KEY_SIZE", "MANIFEST_FILE",
           "MANIFEST_RECORD", "PROPERTIES_BLOCK", "SALT_SIZE", "TABLE_FILE", "TAG_SIZE",
           "WAL_FILE", "WAL_RECORD", "FileCipher", "Keyring", "MasterKey", "Unauthentic",
           "encode_keyring", "keyring_info", "master_key", "new_keyring", "open_keyring",
           "parse_key_bytes", "read_key_file", "rewrap_keyring", "wrong_key"]
