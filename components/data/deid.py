"""De-identification: the pseudonymisation key and keyed pseudonyms.

Pseudonyms are HMAC-SHA256 of a value under a secret key, so the same key always maps the
same PatientID (or UID, or file name) to the same short hex string, and nobody without the
key can test a guessed MRN against it. Keep the key to keep pseudonyms stable across runs;
a new key gives every patient and image a new name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import string
import warnings
from pathlib import Path

from components.data.raw_tree import list_files
from components.data.synthetic.provenance import is_synthesized

MIN_KEY_BYTES = 16
_HEX = frozenset(string.hexdigits)


def parse_key(text: str, origin: str) -> bytes:
    """Turn key text into key bytes.

    Text made only of an even number of hex digits is decoded as hex (what `load_key`
    writes); any other text is used as its UTF-8 bytes, so a passphrase works too.

    Args:
        text: the key as written in the variable or file; surrounding whitespace is ignored.
        origin: where the text came from, for the error message.

    Returns:
        The key bytes.

    Raises:
        ValueError: the key is shorter than 16 bytes.
    """
    text = text.strip()
    if text and len(text) % 2 == 0 and set(text) <= _HEX:
        key = bytes.fromhex(text)
    else:
        key = text.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"{origin}: the de-identification key is {len(key)} bytes, at least "
            f"{MIN_KEY_BYTES} are needed; make one with "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`"
        )
    return key


# The key of the synthetic demo cohort, which portrays no one. It is public so that every
# clone draws the same pseudonyms, hence the same split and results; `study_key` gives it only
# to files `myelomet synthesize` wrote, and refuses it for any other data.
DEMO_KEY = b"myelomet synthetic demo cohort, never real data"


def study_key(dicom_root: Path, env_var: str, key_file: Path, exclude: Path | None = None) -> bytes:
    """The pseudonymisation key for ingesting the files under `dicom_root`.

    A key set in `env_var` is used for every file. Without one, a tree of files that
    `myelomet synthesize` wrote (`provenance.is_synthesized`: their marks, not their folder)
    gets DEMO_KEY; any other tree gets the key file's (`load_key`), which must not be
    DEMO_KEY; a tree that mixes the two is refused.

    Args:
        dicom_root: the DICOM root to ingest.
        env_var: name of the environment variable that may hold the key.
        key_file: file that holds the key as hex (created for real data).
        exclude: a folder under the root that ingest leaves out (its output folder).

    Raises:
        ValueError: the variable is set but blank, the key is too short, the key for real
            data is the demo key, or the tree mixes synthesized and other files.
        FileNotFoundError: `dicom_root` is not a folder.
        OSError: the key file can't be read or created.
    """
    if os.environ.get(env_var) is not None:
        return real_data_key(env_var, key_file)
    if not Path(dicom_root).is_dir():
        raise FileNotFoundError(f"{dicom_root}: DICOM root is not a folder; check --dicom-root")
    files = list_files(Path(dicom_root), exclude=exclude)
    synthesized = sum(is_synthesized(path) for path in files)
    if files and synthesized == len(files):
        return DEMO_KEY
    if synthesized:
        raise ValueError(
            f"{dicom_root}: {synthesized} of {len(files)} files were written by `myelomet "
            "synthesize` and the others were not, and the demo's public key must not name real "
            f"patients; set {env_var} to a secret key (it then names every file), or ingest the "
            "synthetic cohort and your own data from separate folders"
        )
    return real_data_key(env_var, key_file)


def real_data_key(env_var: str, key_file: Path) -> bytes:
    """`load_key`'s key for real patients' files (ingested or pulled from a PACS), refused
    when it is the public demo key."""
    key = load_key(env_var, key_file)
    if key == DEMO_KEY:
        raise ValueError(
            f"the key from {env_var} or {key_file} is the public demo key, which anyone can "
            "use to link pseudonyms back: set a secret key of your own for real data"
        )
    return key


def load_key(env_var: str, key_file: Path) -> bytes:
    """Return the pseudonymisation key, creating a key file on first use.

    Order: the environment variable `env_var` if set (hex, or any passphrase of at least 16
    bytes, see `parse_key`; set but blank is an error, never a silent fallback); else the
    contents of `key_file`; else a new random 32-byte key written to `key_file` as hex, with
    mode 0600 (parent folders created).

    Args:
        env_var: name of the environment variable that may hold the key.
        key_file: file that holds the key as hex.

    Returns:
        The key bytes.

    Raises:
        ValueError: the variable is set but blank, or the key in it or the file is too short.
        OSError: the key file can't be read or created.
    """
    from_env = os.environ.get(env_var)
    if from_env is not None:
        if not from_env.strip():
            raise ValueError(
                f"environment variable {env_var} is set but blank; set it to a secret key "
                f"(`python -c 'import secrets; print(secrets.token_hex(32))'`) or unset it to "
                f"use the key file {key_file}"
            )
        return parse_key(from_env, f"environment variable {env_var}")

    key_file = Path(key_file)
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        text = secrets.token_hex(32)
        try:
            # O_EXCL: two processes starting at once must not each write their own key.
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)  # the umask could have cleared bits, never added
                f.write(text + "\n")
            return bytes.fromhex(text)

    mode = stat.S_IMODE(key_file.stat().st_mode)
    if mode & 0o077:
        warnings.warn(
            f"{key_file}: the de-identification key is readable by other users "
            f"(mode {mode:o}); run `chmod 600 {key_file}`",
            stacklevel=2,
        )
    return parse_key(key_file.read_text(), str(key_file))


def pseudonym(key: bytes, value: str, prefix: str, length: int = 12) -> str:
    """Keyed pseudonym of `value`: `<prefix>-<first length hex digits of HMAC-SHA256>`.

    The prefix is part of the MAC input, so the same value under two prefixes gives two
    unrelated pseudonyms.

    Args:
        key: the secret key (see `load_key`).
        value: the identifying value, e.g. a PatientID.
        prefix: short tag of what the value is, e.g. `pt` for patients.
        length: hex digits kept, 1 to 64.

    Returns:
        The pseudonym, e.g. `pt-3fa2c1d09b1e`.

    Raises:
        ValueError: empty key or length out of range.
    """
    if not key:
        raise ValueError("pseudonym needs a non-empty key; get one with load_key()")
    if not 1 <= length <= 64:
        raise ValueError(f"pseudonym length must be 1 to 64 hex digits, got {length}")
    mac = hmac.new(key, f"{prefix}\x1f{value}".encode(), hashlib.sha256).hexdigest()
    return f"{prefix}-{mac[:length]}"
