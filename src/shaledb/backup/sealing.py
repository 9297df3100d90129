"""A backup repository's own key (``Repository(path, encryption_key_file=...)``): how an
encrypted repository names, encrypts and authenticates its objects and documents, streaming
(docs/format.md, "Encrypted repositories", has every byte; docs/security.md says why).

Keys: the **repository key** (32 bytes, a key file like the database's master key; never
written to the repository) derives, with HKDF-SHA256:

- the *key id* (8 bytes, the same derivation as a database's master key id, so a key file
  has one id wherever it is used), recorded in ``REPOSITORY`` to say which key it needs;
- the *check key*: HMAC-SHA256 of ``REPOSITORY``'s encryption settings, so a wrong key is
  told from an altered file;
- the *name key*: an object is named by HMAC-SHA256(name key, its plaintext). Equal
  plaintexts get equal names (a table is stored once across backups), but without the key
  a name says nothing about the content (a bare SHA-256 would confirm a guessed file);
- the *object key base*: each object and document gets its own key, HKDF of the base with
  a random 16-byte salt stored in its header.

An object is a 24-byte header (``SHALEOB`` + format byte 1 + the salt) and its plaintext cut
into 1 MiB chunks, each sealed with AES-256-GCM (ciphertext + 16-byte tag). Nonce: the
chunk's index (8 bytes little-endian), 3 zero bytes, and 1 on the last chunk (0 before): a
reordered chunk fails (wrong index), a truncated object fails (its new last chunk was
sealed as "not last"), a chunk from another object fails (another key). Associated data:
the header and the context (``object``, or ``document <name>`` for a manifest or WAL entry,
so one moved to another name fails). Every object has at least one chunk (an empty one for
empty plaintext). A (key, nonce) pair never repeats: a fresh salt per object, a fresh index
per chunk.

Memory: a writer or reader buffers at most two chunks (2 MiB) whatever the object's size.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..engine.crypto import CIPHER, KEY_SIZE, SALT_SIZE, TAG_SIZE, MasterKey, random_bytes
from ..errors import CorruptionError, EncryptionError

#: Plaintext bytes per sealed chunk (the last may be shorter).
CHUNK_SIZE = 1 << 20
#: An object's first bytes: magic and format version.
MAGIC = b"SHALEOB"
OBJECT_FORMAT = 1
HEADER_SIZE = len(MAGIC) + 1 + SALT_SIZE
#: How object names are made (recorded in REPOSITORY).
NAMES = "HMAC-SHA256"

_NONCE_TAIL = struct.Struct("<Q3xB")  # chunk index, 3 zero bytes, last flag
_SEALED = CHUNK_SIZE + TAG_SIZE


def stored_size(plain_size: int) -> int:
    """The bytes an object of ``plain_size`` plaintext bytes takes in the repository."""
    chunks = max(1, -(-plain_size // CHUNK_SIZE))
    return HEADER_SIZE + plain_size + chunks * TAG_SIZE


def _nonce(index: int, last: bool) -> bytes:
    return _NONCE_TAIL.pack(index, 1 if last else 0)


def _canonical(info: dict[str, Any]) -> bytes:
    """What the check value covers: every encryption field but ``check``, compact JSON."""
    body = {k: v for k, v in info.items() if k != "check"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class RepositoryKey:
    """The keys derived from a repository key (the key itself is not kept). ``close()``
    zeroes the ones held here."""

    __slots__ = ("_base", "_check", "_names", "key_id")

    def __init__(self, master: MasterKey) -> None:
        self.key_id = master.key_id
        self._names = bytearray(master.derive(b"shaledb repository object names"))
        self._check = bytearray(master.derive(b"shaledb repository check"))
        self._base = bytearray(master.derive(b"shaledb repository object keys"))

    def encryption_info(self) -> dict[str, Any]:
        """REPOSITORY's ``encryption`` field for a new repository under this key."""
        info: dict[str, Any] = {"cipher": CIPHER, "chunk_size": CHUNK_SIZE, "names": NAMES,
                                "object_format": OBJECT_FORMAT, "key_id": self.key_id}
        info["check"] = self.check(info)
        return info

    def check(self, info: dict[str, Any]) -> str:
        """The check value of REPOSITORY's encryption fields (16 bytes of HMAC, hex)."""
        return hmac.new(bytes(self._check), _canonical(info),
                        hashlib.sha256).digest()[:16].hex()

    def accept(self, info: Any, location: str) -> None:
        """Check REPOSITORY's ``encryption`` field against this key: EncryptionError for
        another key, CorruptionError when the field was altered."""
        if not isinstance(info, dict) or not isinstance(info.get("key_id"), str):
            raise CorruptionError(f"{location}/REPOSITORY: its encryption field is malformed")
        if info["key_id"] != self.key_id:
            raise EncryptionError(
                f"wrong key for the backup repository {location!r}: it needs the key with id "
                f"{info['key_id']}, the key given has id {self.key_id}; pass the repository's "
                f"key (Repository(path, encryption_key_file=...) or --repo-key-file)")
        check = info.get("check")
        if not isinstance(check, str) or not hmac.compare_digest(check, self.check(info)):
            raise CorruptionError(
                f"{location}/REPOSITORY was altered: its check value does not match the key "
                f"(whose id it names)")
        if (info.get("cipher") != CIPHER or info.get("chunk_size") != CHUNK_SIZE
                or info.get("names") != NAMES or info.get("object_format") != OBJECT_FORMAT):
            raise CorruptionError(f"{location}/REPOSITORY: encryption settings this ShaleDB "
                                  f"does not know ({info}); upgrade ShaleDB")

    def _aead(self, salt: bytes) -> AESGCM:
        key = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt,
                   info=b"shaledb repository object key").derive(bytes(self._base))
        return AESGCM(key)

    def sealer(self, context: bytes) -> ObjectSealer:
        return ObjectSealer(self, context)

    def opener(self, context: bytes, where: str) -> ObjectOpener:
        return ObjectOpener(self, context, where)

    def name_hmac(self) -> hmac.HMAC:
        return hmac.new(bytes(self._names), digestmod=hashlib.sha256)

    def seal_document(self, raw: bytes, name: str) -> bytes:
        """A whole (small) document sealed for the object name ``name``."""
        s = self.sealer(b"document " + name.encode())
        return s.header + b"".join(s.feed(raw)) + s.finish()

    def open_document(self, sealed: bytes, name: str, where: str) -> bytes:
        """The plaintext of :meth:`seal_document`'s ``sealed``, if it is authentic and was
        sealed for ``name``."""
        o = self.opener(b"document " + name.encode(), where)
        return b"".join(o.feed(sealed)) + o.finish()

    def close(self) -> None:
        for k in (self._names, self._check, self._base):
            k[:] = bytes(len(k))

    def __repr__(self) -> str:
        return f"<RepositoryKey id={self.key_id}>"


class ObjectSealer:
    """Encrypts one object as it is streamed: ``header``, then ``feed(plain)`` for each
    piece (returns the sealed chunks it completed), then ``finish()`` (the last chunk).
    ``name()`` is then the object's name (HMAC of the plaintext), ``size`` its plaintext
    size."""

    def __init__(self, key: RepositoryKey, context: bytes) -> None:
        salt = random_bytes(SALT_SIZE)
        self.header = MAGIC + bytes([OBJECT_FORMAT]) + salt
        self._aad = self.header + context
        self._aead = key._aead(salt)
        self._mac = key.name_hmac()
        self._buf = bytearray()
        self._index = 0
        self.size = 0

    def _seal(self, plain: bytes | bytearray, last: bool) -> bytes:
        sealed: bytes = self._aead.encrypt(_nonce(self._index, last), bytes(plain), self._aad)
        self._index += 1
        return sealed

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        self._mac.update(data)
        self.size += len(data)
        self._buf += data
        out = []
        # A full chunk is sealed as "not last" only once a byte after it is known.
        while len(self._buf) > CHUNK_SIZE:
            out.append(self._seal(self._buf[:CHUNK_SIZE], False))
            del self._buf[:CHUNK_SIZE]
        return out

    def finish(self) -> bytes:
        last = self._seal(self._buf, True)
        self._buf = bytearray()
        return last

    def name(self) -> str:
        return self._mac.hexdigest()


class ObjectOpener:
    """Decrypts and authenticates one object as it is streamed: ``feed(stored)`` returns the
    plaintext of the chunks it completed, ``finish()`` the last one; CorruptionError
    (naming ``where``) for damage, truncation, reordering or bytes from another object.
    ``name()`` is the HMAC of the plaintext (compare it with the object's name)."""

    def __init__(self, key: RepositoryKey, context: bytes, where: str) -> None:
        self._key = key
        self._context = context
        self._where = where
        self._aead: AESGCM | None = None
        self._aad = b""
        self._mac = key.name_hmac()
        self._buf = bytearray()
        self._index = 0
        self.size = 0

    def _damaged(self, why: str) -> CorruptionError:
        return CorruptionError(f"{self._where} is damaged: {why}")

    def _open(self, sealed: bytes | bytearray, last: bool) -> bytes:
        assert self._aead is not None
        try:
            plain: bytes = self._aead.decrypt(_nonce(self._index, last), bytes(sealed),
                                              self._aad)
        except InvalidTag:
            raise self._damaged(
                f"chunk {self._index} fails authentication (changed, truncated, reordered, "
                f"or taken from another object)") from None
        self._index += 1
        self._mac.update(plain)
        self.size += len(plain)
        return plain

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        self._buf += data
        if self._aead is None:
            if len(self._buf) < HEADER_SIZE:
                return []
            header = bytes(self._buf[:HEADER_SIZE])
            if header[:len(MAGIC)] != MAGIC:
                raise self._damaged("it does not start like an encrypted repository object")
            if header[len(MAGIC)] != OBJECT_FORMAT:
                raise self._damaged(f"object format {header[len(MAGIC)]} is not "
                                    f"{OBJECT_FORMAT} (written by a newer ShaleDB?)")
            self._aead = self._key._aead(header[len(MAGIC) + 1:])
            self._aad = header + self._context
            del self._buf[:HEADER_SIZE]
        out = []
        while len(self._buf) > _SEALED:
            out.append(self._open(self._buf[:_SEALED], False))
            del self._buf[:_SEALED]
        return out

    def finish(self) -> bytes:
        if self._aead is None or len(self._buf) < TAG_SIZE:
            raise self._damaged("it is truncated")
        last = self._open(self._buf, True)
        self._buf = bytearray()
        return last

    def name(self) -> str:
        return self._mac.hexdigest()


__all__ = ["CHUNK_SIZE", "HEADER_SIZE", "MAGIC", "NAMES", "OBJECT_FORMAT", "ObjectOpener",
           "ObjectSealer", "RepositoryKey", "stored_size"]
