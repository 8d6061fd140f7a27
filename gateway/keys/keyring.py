"""The local keyring: the embedded default KMS, plus token keys, the quarantine key, role keys and
the audit MAC keys.

One JSON file, created on first use with mode 0600 and replaced atomically on change. Key bytes
live in private attributes and never appear in a repr, a log line or an exception.

Role keys (section ``roles``, one versioned key per role: gateway.keys.roles) wrap the data keys of
role-scoped fields. A keyring that holds any is written as format 2, which older gateways refuse to
read rather than rewrite without them. ``export_role`` writes a keyring holding one role's key
versions and nothing else (``"role_export": ROLE``): its holder opens that role's fields only, and
the gateway refuses to run or change keys on it.

Audit keys (section ``audit``, ``audit-<hex>`` ids, one active: gateway.core.audit.AuditKeys) MAC the
audit records, so write access to the audit topic cannot append a record that verifies. They are
made on first use (`audit_keys`, or `gateway keys init`); a keyring that holds them is written as
format 3, which older gateways refuse to read rather than rewrite without them. ``export_audit``
writes a keyring holding the audit keys and nothing else (``"audit_export": true``): the aggregate
worker seals its audit records with it (it holds no other key), an auditor verifies with it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import DecryptError, KeyringError
from gateway.keys.kms import WrappedKey
from gateway.keys.roles import ROLE_NAME_RULE, valid_role

KEYRING_FORMAT = 1
ROLES_FORMAT = 2  # a keyring with role keys, or a role export
AUDIT_FORMAT = 3  # a keyring with audit keys (and perhaps role keys)
FORMATS = (KEYRING_FORMAT, ROLES_FORMAT, AUDIT_FORMAT)
_WRAP_AAD = b"privacy-gateway/dek-wrap/v1"
_ROLE_WRAP_AAD = b"privacy-gateway/role-wrap/v1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, where: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise KeyringError(f"keyring entry {where} is not base64") from None
    if len(data) != 32:
        raise KeyringError(f"keyring entry {where} must be a 32-byte key, found {len(data)} bytes")
    return data


def _seal_dek(kek: AESGCM, dek: bytes, aad: bytes) -> bytes:
    """The local keyring's wrapped-DEK format, for its KEKs and its role keys alike: a fresh random 96-bit
    nonce, then the DEK under the wrapping key `kek` (AES-GCM) with `aad` (the wrap's purpose, the key id
    and the caller's context)."""
    nonce = secrets.token_bytes(12)
    return nonce + kek.encrypt(nonce, dek, aad)


def _open_dek(kek: AESGCM, blob: bytes, aad: bytes, key: str) -> bytes:
    """A DEK `_seal_dek` wrapped; `key` names the wrapping key in the error."""
    if len(blob) < 12 + 16 + 32:
        raise DecryptError("malformed", "the wrapped DEK is too short for the local keyring's format")
    try:
        return kek.decrypt(blob[:12], blob[12:], aad)
    except InvalidTag:
        raise DecryptError("tampered", f"the wrapped DEK does not authenticate under {key}: "
                           "the ciphertext header was altered") from None


class _VersionedKeys:
    """Named 256-bit keys with one active version; used for KEKs, token domains and quarantine."""

    def __init__(self, active: str, keys: dict[str, bytes]) -> None:
        self._active = active
        self._keys = keys

    @property
    def active(self) -> str:
        return self._active

    def ids(self) -> list[str]:
        return list(self._keys)

    def get(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    def active_key(self) -> bytes:
        return self._keys[self._active]

    def add(self, key_id: str) -> None:
        """Add a fresh key under `key_id` and make it the active one (rotation)."""
        if key_id in self._keys:
            raise KeyringError(f"key '{key_id}' already exists")
        self._keys[key_id] = secrets.token_bytes(32)
        self._active = key_id

    def remove(self, key_id: str) -> None:
        if key_id == self._active:
            raise KeyringError(f"key '{key_id}' is the active one: rotate first, then retire it")
        if self._keys.pop(key_id, None) is None:
            raise KeyringError(f"key '{key_id}' is not in the keyring")

    def to_json(self) -> dict[str, Any]:
        return {"active": self._active, "keys": {k: _b64(v) for k, v in self._keys.items()}}

    @classmethod
    def from_json(cls, data: Any, where: str) -> _VersionedKeys:
        if not isinstance(data, dict) or not isinstance(data.get("keys"), dict):
            raise KeyringError(f"keyring section {where} must be an object with 'active' and 'keys'")
        keys = {str(k): _unb64(v, f"{where}.keys.{k}") for k, v in data["keys"].items()}
        active = str(data.get("active"))
        if active not in keys:
            raise KeyringError(f"keyring section {where}: active key '{active}' is not among its keys")
        return cls(active, keys)

    @classmethod
    def fresh(cls, first_id: str) -> _VersionedKeys:
        return cls(first_id, {first_id: secrets.token_bytes(32)})

    @classmethod
    def empty(cls) -> _VersionedKeys:
        """No keys at all: the KEK and quarantine sections of a role export."""
        return cls("", {})

    def copy(self) -> _VersionedKeys:
        return _VersionedKeys(self._active, dict(self._keys))

    def __repr__(self) -> str:
        return f"<keys active={self._active!r} versions={len(self._keys)}>"


class Keyring:
    """Local keyring file. Acts as the KMS provider 'local' for KEKs."""

    name = "local"

    def __init__(self, path: Path, keks: _VersionedKeys, token_domains: dict[str, _VersionedKeys],
                 quarantine: _VersionedKeys, roles: dict[str, _VersionedKeys] | None = None,
                 role_export: str | None = None, audit: _VersionedKeys | None = None,
                 audit_export: bool = False) -> None:
        self.path = path
        self._keks = keks
        self._token_domains = token_domains
        self._quarantine = quarantine
        self._roles: dict[str, _VersionedKeys] = roles if roles is not None else {}
        self._audit = audit  # None: no audit key made yet
        self.audit_export = audit_export  # a keyring of the audit keys alone
        self.role_export = role_export  # the one role of an exported keyring, else None
        self._kek_aeads: dict[str, AESGCM] = {}
        self._role_aeads: dict[tuple[str, str], AESGCM] = {}
        self._mtime = self._stat_mtime()

    def __repr__(self) -> str:
        if self.role_export is not None:
            return f"<Keyring path={str(self.path)!r} role_export={self.role_export!r}>"
        if self.audit_export:
            return f"<Keyring path={str(self.path)!r} audit_export=True>"
        return (f"<Keyring path={str(self.path)!r} kek={self._keks.active!r} "
                f"token_domains={sorted(self._token_domains)} roles={sorted(self._roles)}>")

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, create: bool = True) -> Keyring:
        """Load the keyring; create it (mode 0600) when absent and `create` is set."""
        path = Path(path)
        if not path.exists():
            if not create:
                raise KeyringError(f"keyring '{path}' does not exist: point --keyring at the gateway's "
                                   "keyring file (the key holder gives it to authorized consumers)")
            # ids are unique per keyring, so another keyring's key is "not held", never mistaken for it
            ring = cls(path, _VersionedKeys.fresh(f"kek-{secrets.token_hex(6)}"), {},
                       _VersionedKeys.fresh(f"quarantine-{secrets.token_hex(6)}"))
            if ring._write(exclusive=True):
                return ring
        return cls._read(path)

    @classmethod
    def _read(cls, path: Path) -> Keyring:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            raw = path.read_bytes()
        except OSError as exc:
            raise KeyringError(f"cannot read keyring '{path}': {exc.strerror}") from None
        # group read is tolerated for Kubernetes Secret volumes with fsGroup (mode 0440)
        if mode & 0o037:
            raise KeyringError(f"keyring '{path}' is accessible to others or group-writable (mode {mode:o}); "
                               f"run: chmod 600 {path}")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise KeyringError(f"keyring '{path}' is not valid JSON") from None
        if not isinstance(data, dict) or data.get("format") not in FORMATS:
            raise KeyringError(f"keyring '{path}' has an unknown format (expected format "
                               f"{', '.join(map(str, FORMATS))})")
        roles_raw = data.get("roles") or {}
        if not isinstance(roles_raw, dict) or not all(valid_role(r) for r in roles_raw):
            raise KeyringError(f"keyring '{path}': roles must be an object keyed by role names ({ROLE_NAME_RULE})")
        roles = {r: _VersionedKeys.from_json(v, f"roles.{r}") for r, v in roles_raw.items()}
        if data.get("audit_export") is True:
            if "audit" not in data or set(data) - {"format", "audit_export", "audit"}:
                raise KeyringError(f"keyring '{path}': an audit export must hold the audit keys and nothing else")
            return cls(path, _VersionedKeys.empty(), {}, _VersionedKeys.empty(),
                       audit=_VersionedKeys.from_json(data["audit"], "audit"), audit_export=True)
        export = data.get("role_export")
        if export is not None:
            if not valid_role(export) or set(roles) != {export}:
                raise KeyringError(f"keyring '{path}': a role export must hold exactly the key of its role_export")
            return cls(path, _VersionedKeys.empty(), {}, _VersionedKeys.empty(), roles, export)
        keks = _VersionedKeys.from_json(data.get("kek"), "kek")
        quarantine = _VersionedKeys.from_json(data.get("quarantine"), "quarantine")
        domains_raw = data.get("token_domains") or {}
        if not isinstance(domains_raw, dict):
            raise KeyringError(f"keyring '{path}': token_domains must be an object")
        domains = {d: _VersionedKeys.from_json(v, f"token_domains.{d}") for d, v in domains_raw.items()}
        audit = _VersionedKeys.from_json(data["audit"], "audit") if "audit" in data else None
        return cls(path, keks, domains, quarantine, roles, audit=audit)

    def _content(self) -> dict[str, Any]:
        roles = {r: k.to_json() for r, k in sorted(self._roles.items())}
        if self.role_export is not None:
            return {"format": ROLES_FORMAT, "role_export": self.role_export, "roles": roles}
        if self.audit_export and self._audit is not None:
            return {"format": AUDIT_FORMAT, "audit_export": True, "audit": self._audit.to_json()}
        content: dict[str, Any] = {
            "format": AUDIT_FORMAT if self._audit is not None else ROLES_FORMAT if roles else KEYRING_FORMAT,
            "kek": self._keks.to_json(),
            "token_domains": {d: k.to_json() for d, k in sorted(self._token_domains.items())},
            "quarantine": self._quarantine.to_json(),
        }
        if roles:
            content["roles"] = roles
        if self._audit is not None:
            content["audit"] = self._audit.to_json()
        return content

    def _write(self, exclusive: bool = False) -> bool:
        """Write atomically with mode 0600. With `exclusive`, lose gracefully to a concurrent creator."""
        data = orjson.dumps(self._content(), option=orjson.OPT_INDENT_2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".keyring-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if exclusive:
                try:
                    os.link(tmp, self.path)  # fails if another process created it first
                except FileExistsError:
                    return False
            else:
                os.replace(tmp, self.path)
                tmp = ""
            return True
        finally:
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    # ---- rotation ---------------------------------------------------------------------------
    def _stat_mtime(self) -> tuple[int, int]:
        """(inode, mtime ns): every write replaces the file, so a new inode marks a change."""
        try:
            st = self.path.stat()
        except OSError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    def reload_if_changed(self) -> bool:
        """Pick up a rotation made by another process (`gateway keys rotate`): one stat() per call.

        Called when a new DEK is wrapped and when an unknown KEK is asked for, never per event.
        Token keys stay as the running pipeline built them: token rotation takes effect on restart.
        """
        mtime = self._stat_mtime()
        if mtime == self._mtime or not self.path.exists():
            return False
        latest = self._read(self.path)
        self._keks, self._quarantine, self._roles = latest._keks, latest._quarantine, latest._roles
        self._audit = latest._audit
        self._token_domains.update(latest._token_domains)
        self._mtime = mtime
        return True

    def _refuse_export(self, what: str) -> None:
        if self.audit_export:
            raise KeyringError(f"keyring '{self.path}' is an export of the audit keys only: it cannot {what}. Use "
                               "the key holder's keyring")
        if self.role_export is not None:
            raise KeyringError(f"keyring '{self.path}' is an export of role '{self.role_export}''s key only: it "
                               f"cannot {what}. Use the key holder's keyring")

    def _update(self, change: Any) -> Any:
        """Apply `change(latest_keyring)` to the file's latest content under the lock, write, adopt it."""
        self._refuse_export("change keys")
        try:
            with self._locked():
                latest = self._read(self.path) if self.path.exists() else self
                result = change(latest)
                latest._write()
        except OSError as exc:
            raise KeyringError(f"cannot update keyring '{self.path}' ({exc.strerror})") from None
        self._keks, self._quarantine, self._token_domains = latest._keks, latest._quarantine, latest._token_domains
        self._roles, self._audit = latest._roles, latest._audit
        self._mtime = self._stat_mtime()
        return result

    def rotate_kek(self) -> str:
        """Add a new KEK and make it active: new DEKs are wrapped with it; older KEKs still unwrap."""
        new_id = f"kek-{secrets.token_hex(6)}"
        self._update(lambda ring: ring._keks.add(new_id))
        return new_id

    def rotate_token_domain(self, domain: str) -> str:
        """Add version N+1 of a token domain's key and make it active; return the new version."""
        def change(ring: Keyring) -> str:
            keys = ring._token_domains.get(domain)
            if keys is None:
                raise KeyringError(f"token domain '{domain}' has no key in keyring '{self.path}': "
                                   "run gateway keys init first")
            version = str(max(int(v) for v in keys.ids() if v.isdigit()) + 1)
            keys.add(version)
            return version

        return str(self._update(change))

    def retire_kek(self, kek_id: str) -> None:
        """Delete an old KEK. Every DEK still wrapped only under it becomes unreadable (see docs/operations/keys.md)."""
        self._update(lambda ring: ring._keks.remove(kek_id))
        self._kek_aeads.pop(kek_id, None)

    def kek_ids(self) -> list[str]:
        return self._keks.ids()

    # ---- KMS provider: KEK wrap / unwrap ----------------------------------------------------
    def active_key_id(self) -> str:
        return self._keks.active

    def healthy(self) -> bool:
        return True

    def _kek_aead(self, kek_id: str) -> AESGCM:
        aead = self._kek_aeads.get(kek_id)
        if aead is None:
            key = self._keks.get(kek_id)
            if key is None and self.reload_if_changed():  # rotated by another process since we loaded
                key = self._keks.get(kek_id)
            if key is None:
                raise DecryptError("key_not_held", f"KEK '{kek_id}' is not in keyring '{self.path}'")
            aead = self._kek_aeads[kek_id] = AESGCM(key)
        return aead

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        self._refuse_export("wrap data keys")
        self.reload_if_changed()  # once per new DEK: a rotation applies to the next DEK
        kek_id = self._keks.active
        return WrappedKey(kek_id, _seal_dek(self._kek_aead(kek_id), dek, _WRAP_AAD + kek_id.encode() + context))

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        return _open_dek(self._kek_aead(wrapped.kek_id), wrapped.blob, _WRAP_AAD + wrapped.kek_id.encode() + context,
                         f"KEK '{wrapped.kek_id}'")

    # ---- token keys -----------------------------------------------------------------------
    def ensure_token_domains(self, domains: set[str]) -> None:
        """Create keys for token domains the policies use and the keyring lacks (then persist)."""
        missing = sorted(d for d in domains if d not in self._token_domains)
        if not missing:
            return
        self._refuse_export("hold token keys")
        try:
            with self._locked():  # several workers may start at once: one writer, all read its keys
                latest = self._read(self.path) if self.path.exists() else self
                self._token_domains.update(latest._token_domains)
                # the file is the truth under the lock: keep what others added (rotated KEKs, role keys)
                self._keks, self._quarantine, self._roles = latest._keks, latest._quarantine, latest._roles
                self._audit = latest._audit
                for domain in missing:
                    self._token_domains.setdefault(domain, _VersionedKeys.fresh("1"))
                self._write()
        except OSError as exc:
            raise KeyringError(f"keyring '{self.path}' lacks token domains {missing} and cannot be updated "
                               f"({exc.strerror}); create it beforehand with: gateway keys init") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def token_keys(self, domain: str) -> tuple[str, dict[str, bytes]]:
        """(active version, {version: key}) for a token domain."""
        keys = self._token_domains.get(domain)
        if keys is None:
            raise KeyringError(f"token domain '{domain}' has no key in keyring '{self.path}'")
        return keys.active, {v: keys.get(v) or b"" for v in keys.ids()}

    # ---- quarantine key -------------------------------------------------------------------
    def rotate_quarantine(self) -> str:
        """Add a new quarantine key and make it active: new dead letters are sealed under it (running
        workers pick it up at their next seal); the older ones stay to unseal earlier dead letters."""
        new_id = f"quarantine-{secrets.token_hex(6)}"
        self._update(lambda ring: ring._quarantine.add(new_id))
        return new_id

    def quarantine_key_ids(self) -> list[str]:
        return self._quarantine.ids()

    def quarantine_key(self, key_id: str | None = None) -> tuple[str, bytes]:
        if self.role_export is not None:
            raise DecryptError("key_not_held", f"keyring '{self.path}' is an export of role '{self.role_export}''s "
                               "key: it holds no quarantine key")
        key_id = key_id or self._quarantine.active
        key = self._quarantine.get(key_id)
        if key is None:
            raise DecryptError("key_not_held", f"quarantine key '{key_id}' is not in keyring '{self.path}'")
        return key_id, key

    # ---- audit keys (gateway.core.audit.AuditKeys) ------------------------------------------------------
    def audit_keys(self, create: bool = True) -> tuple[str, dict[str, bytes]]:
        """(active id, {id: key}) of the audit MAC keys; the first one is made now (under the lock, adopting
        what others wrote) when the keyring has none and `create` is set, else none is active ("")."""
        if self._audit is None and create:
            def change(ring: Keyring) -> None:
                if ring._audit is None:
                    ring._audit = _VersionedKeys.fresh(_audit_key_id())

            try:
                self._update(change)
            except KeyringError as exc:
                raise KeyringError(f"{exc}: the keyring has no audit key; create it beforehand with: gateway keys "
                                   "init") from None
        if self._audit is None:
            return "", {}
        return self._audit.active, {k: self._audit.get(k) or b"" for k in self._audit.ids()}

    def export_audit(self, out: Path) -> int:
        """Write a keyring (mode 0600) holding every audit key version and nothing else; return the number
        of versions (the aggregate worker's keyring, and an auditor's)."""
        self._refuse_export("export the audit keys")
        self.audit_keys()
        out = Path(out)
        if out.resolve() == self.path.resolve():
            raise KeyringError(f"the export would replace keyring '{self.path}' itself: choose another --out")
        assert self._audit is not None  # made by audit_keys()
        export = Keyring(out, _VersionedKeys.empty(), {}, _VersionedKeys.empty(), audit=self._audit.copy(),
                         audit_export=True)
        try:
            export._write()
        except OSError as exc:
            raise KeyringError(f"cannot write the export '{out}' ({exc.strerror})") from None
        return len(self._audit.ids())

    def rotate_audit_key(self) -> str:
        """A new audit key, made active: records sealed from the workers' restart carry its id; older
        records verify while the keyring holds their key."""
        new_id = _audit_key_id()

        def change(ring: Keyring) -> None:
            if ring._audit is None:
                ring._audit = _VersionedKeys.fresh(new_id)
            else:
                ring._audit.add(new_id)

        self._update(change)
        return new_id

    # ---- role keys (gateway.keys.roles) ----------------------------------------------------------
    def roles(self) -> list[str]:
        return sorted(self._roles)

    def role_key_ids(self, role: str) -> list[str]:
        keys = self._roles.get(role)
        return keys.ids() if keys is not None else []

    def ensure_roles(self, roles: set[str]) -> list[str]:
        """Create a key for each role the keyring lacks (under the lock, adopting others' keys); return the
        roles created."""
        if not (set(roles) - set(self._roles)):
            return []
        bad = sorted(r for r in roles if not valid_role(r))
        if bad:
            raise KeyringError(f"not role names: {bad} ({ROLE_NAME_RULE})")

        def change(ring: Keyring) -> list[str]:
            created = sorted(r for r in roles if r not in ring._roles)
            for role in created:
                ring._roles[role] = _VersionedKeys.fresh(_role_key_id(role))
            return created

        try:
            return list(self._update(change))
        except KeyringError as exc:
            if self.role_export is not None:
                raise
            raise KeyringError(f"{exc}: the keyring lacks keys for roles {sorted(set(roles) - set(self._roles))}; "
                               "create them beforehand with: gateway keys init --role R") from None

    def rotate_role(self, role: str) -> str:
        """Add a new version of a role's key and make it active; older versions still unwrap."""
        new_id = _role_key_id(role)

        def change(ring: Keyring) -> None:
            keys = ring._roles.get(role)
            if keys is None:
                raise KeyringError(f"role '{role}' has no key in keyring '{self.path}': run gateway keys init "
                                   f"--role {role} first")
            keys.add(new_id)

        self._update(change)
        return new_id

    def export_role(self, role: str, out: Path) -> int:
        """Write a keyring (mode 0600) holding every version of `role`'s key and nothing else; return the
        number of versions. The consumer it is given to opens that role's fields only."""
        self.reload_if_changed()
        keys = self._roles.get(role)
        if keys is None:
            raise KeyringError(f"keyring '{self.path}' holds no key for role '{role}': create it with "
                               f"gateway keys init --role {role}")
        out = Path(out)
        if out.resolve() == self.path.resolve():
            raise KeyringError(f"the export would replace keyring '{self.path}' itself: choose another --out")
        export = Keyring(out, _VersionedKeys.empty(), {}, _VersionedKeys.empty(), {role: keys.copy()}, role)
        try:
            export._write()
        except OSError as exc:
            raise KeyringError(f"cannot write the export '{out}' ({exc.strerror})") from None
        return len(keys.ids())

    def role_wrapping_kms(self, role: str) -> KeyringRoleKms:
        """The role's KEK as a KMS provider for the worker: made now if the keyring lacks it."""
        self.ensure_roles({role})
        return KeyringRoleKms(self, role)

    def role_unwrapping_kms(self, role: str) -> KeyringRoleKms:
        """The role's KEK versions as a KMS provider for a consumer (key_not_held when absent)."""
        return KeyringRoleKms(self, role)

    def _role_aead(self, role: str, key_id: str) -> AESGCM:
        aead = self._role_aeads.get((role, key_id))
        if aead is None:
            keys = self._roles.get(role)
            key = keys.get(key_id) if keys is not None else None
            if key is None and self.reload_if_changed():  # rotated or created by another process
                keys = self._roles.get(role)
                key = keys.get(key_id) if keys is not None else None
            if keys is None:
                raise DecryptError("key_not_held", f"keyring '{self.path}' holds no key for role '{role}' (the key "
                                   f"holder gives one: gateway keys export --role {role} --out FILE)")
            if key is None:
                raise DecryptError("key_not_held", f"key '{key_id}' of role '{role}' is not in keyring '{self.path}' "
                                   "(made after this keyring was exported? ask the key holder for a new export)")
            aead = self._role_aeads[(role, key_id)] = AESGCM(key)
        return aead

    def _role_active(self, role: str) -> str:
        keys = self._roles.get(role)
        if keys is None:
            raise KeyringError(f"keyring '{self.path}' holds no key for role '{role}': gateway keys init --role {role}")
        return keys.active

    def _role_wrap(self, role: str, dek: bytes, context: bytes) -> WrappedKey:
        self._refuse_export("wrap data keys")
        self.reload_if_changed()  # once per new DEK: a rotation applies to the next DEK
        kek_id = self._role_active(role)
        return WrappedKey(kek_id, _seal_dek(self._role_aead(role, kek_id), dek,
                                            _ROLE_WRAP_AAD + kek_id.encode() + context))

    def _role_unwrap(self, role: str, wrapped: WrappedKey, context: bytes) -> bytes:
        aead = self._role_aead(role, wrapped.kek_id)  # only this role's versions: another role's id is not held
        return _open_dek(aead, wrapped.blob, _ROLE_WRAP_AAD + wrapped.kek_id.encode() + context,
                         f"key '{wrapped.kek_id}' of role '{role}'")


def _audit_key_id() -> str:
    return f"audit-{secrets.token_hex(6)}"


def _role_key_id(role: str) -> str:
    # unique per keyring, like KEK ids: another keyring's role key is "not held", never mistaken for it
    return f"role-{role}-{secrets.token_hex(6)}"


class KeyringRoleKms:
    """One role's key versions in a keyring, as a KMS provider ('local'): wraps under the active
    version, unwraps with this role's versions only."""

    name = "local"

    def __init__(self, keyring: Keyring, role: str) -> None:
        self._keyring = keyring
        self.role = role

    def __repr__(self) -> str:
        return f"<KeyringRoleKms role={self.role!r} keyring={str(self._keyring.path)!r}>"

    def active_key_id(self) -> str:
        return self._keyring._role_active(self.role)

    def healthy(self) -> bool:
        return True

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        return self._keyring._role_wrap(self.role, dek, context)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        return self._keyring._role_unwrap(self.role, wrapped, context)
