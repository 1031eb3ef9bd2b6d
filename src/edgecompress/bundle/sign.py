"""Optional signatures of bundles with an SSH key (``ssh-keygen -Y``, Ed25519 or any key OpenSSH signs with).

``SHA256SUMS`` covers every file of a bundle, so signing it signs the bundle: ``SHA256SUMS.sig`` beside it is an
OpenSSH signature in the namespace ``edgecompress-bundle``. What it protects against: someone who can rewrite the
bundle — and its ``SHA256SUMS`` with it — cannot make a signature that verifies against the producer's public key in
your ``allowed_signers`` file. What it does not: a stolen signing key, an ``allowed_signers`` file you did not check,
or an older bundle the same key signed (there is no freshness).

Verify by hand, without edgecompress::

    ssh-keygen -Y verify -f allowed_signers -I me@example.com -n edgecompress-bundle -s SHA256SUMS.sig < SHA256SUMS
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from edgecompress._io import atomic_write_bytes
from edgecompress.bundle.manifest import SUMS_NAME
from edgecompress.errors import BundleError

SIG_NAME = SUMS_NAME + ".sig"
NAMESPACE = "edgecompress-bundle"
_TIMEOUT_S = 60


def _ssh_keygen() -> str:
    exe = shutil.which("ssh-keygen")
    if exe is None:
        raise BundleError("ssh-keygen (OpenSSH 8.1 or newer) is not installed", "install openssh-client")
    return exe


def sign_bundle(bundle_dir: Path, key: Path) -> Path:
    """Sign ``bundle_dir/SHA256SUMS`` with the private SSH key ``key``; write and return ``SHA256SUMS.sig``.

    Raises:
        BundleError: no SHA256SUMS, no key file, or ssh-keygen refused (its message, one line).
    """
    bundle_dir, key = Path(bundle_dir), Path(key)
    sums = bundle_dir / SUMS_NAME
    if not sums.is_file() or sums.is_symlink():
        raise BundleError(f"{bundle_dir} has no {SUMS_NAME}", "sign a bundle folder written by this edgecompress")
    if not key.is_file():
        raise BundleError(f"signing key {key} does not exist or is not a file", "give the path of a private SSH key")
    with tempfile.TemporaryDirectory(prefix="edgecompress-sign-") as tmp:
        copy = Path(tmp) / SUMS_NAME
        shutil.copyfile(sums, copy)
        res = subprocess.run(  # noqa: S603 (argument list, no shell)
            [_ssh_keygen(), "-Y", "sign", "-q", "-f", str(key), "-n", NAMESPACE, str(copy)],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        sig = copy.with_name(SIG_NAME)
        if res.returncode != 0 or not sig.is_file():
            why = " ".join(res.stderr.split())[:200] or f"exit {res.returncode}"
            raise BundleError(f"ssh-keygen could not sign with {key} ({why})", "give an unencrypted private SSH key")
        return atomic_write_bytes(bundle_dir / SIG_NAME, sig.read_bytes())


def verify_signature(bundle_dir: Path, allowed_signers: Path, identity: str) -> None:
    """Check ``SHA256SUMS.sig`` against ``allowed_signers`` for ``identity`` (run after the checksums passed).

    Raises:
        BundleError: the bundle is not signed, or the signature does not verify for that identity (one line).
    """
    bundle_dir, allowed_signers = Path(bundle_dir), Path(allowed_signers)
    sig = bundle_dir / SIG_NAME
    if not sig.is_file() or sig.is_symlink():
        raise BundleError(f"bundle {bundle_dir} is not signed (no {SIG_NAME})", "ask its producer for a signed bundle")
    if not allowed_signers.is_file():
        raise BundleError(
            f"allowed-signers file {allowed_signers} does not exist", "give an OpenSSH allowed_signers file"
        )
    with open(bundle_dir / SUMS_NAME, "rb") as sums:
        res = subprocess.run(  # noqa: S603 (argument list, no shell)
            [_ssh_keygen(), "-Y", "verify", "-f", str(allowed_signers), "-I", identity, "-n", NAMESPACE,
             "-s", str(sig)],
            stdin=sums,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
        )  # fmt: skip
    if res.returncode != 0:
        why = " ".join((res.stderr or res.stdout).split())[:200] or f"exit {res.returncode}"
        raise BundleError(
            f"the signature of bundle {bundle_dir} does not verify for {identity!r} ({why})",
            "use the original bundle, or check --allowed-signers and --identity",
        )
