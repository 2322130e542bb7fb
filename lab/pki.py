"""Certificates for a lab: one CA per lab, certificates issued by it with openssl.

A lab keeps everything under ``<lab dir>/pki``::

    ca.crt, ca.key          the lab's CA (EC P-256, valid for LIFETIME_DAYS)
    NAME.crt, NAME.key      a certificate issued by :meth:`Pki.issue`
    sa.key, sa.pub          the service-account signing key pair (kube-apiserver)

Issuing is idempotent: an existing NAME.crt is returned as it is.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
LIFETIME_DAYS = 30
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class PkiError(RuntimeError):
    pass


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    p = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, check=False,
                       timeout=30)
    if p.returncode != 0:
        raise PkiError(f"openssl {' '.join(args[:2])} failed: {p.stderr.strip()}")


class Pki:
    def __init__(self, directory: Path, ca_name: str = "tortie-lab-ca") -> None:
        self.dir = directory
        self.ca_name = ca_name

    @property
    def ca(self) -> Cert:
        return Cert(self.dir / "ca.crt", self.dir / "ca.key")

    def ensure_ca(self) -> Cert:
        if not self.ca.cert.exists():
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            _openssl("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.crt", "-days",
                     str(LIFETIME_DAYS), "-subj", f"/CN={self.ca_name}", cwd=self.dir)
        return self.ca

    def issue(self, name: str, cn: str, *, orgs: tuple[str, ...] = (),
              ips: tuple[str, ...] = (), dns: tuple[str, ...] = (),
              server: bool = False, client: bool = True) -> Cert:
        """A certificate ``NAME.crt`` for subject CN=cn (O=each of orgs), with these SANs and
        extended key usages."""
        out = Cert(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        if out.cert.exists():
            return out
        self.ensure_ca()
        usages = [u for u, on in (("serverAuth", server), ("clientAuth", client)) if on]
        ext = [f"extendedKeyUsage={','.join(usages)}",
               "keyUsage=critical,digitalSignature,keyEncipherment",
               "basicConstraints=critical,CA:FALSE"]
        sans = [f"IP:{i}" for i in ips] + [f"DNS:{d}" for d in dns]
        if sans:
            ext.append("subjectAltName=" + ",".join(sans))
        (self.dir / f"{name}.ext").write_text("\n".join(ext) + "\n")
        subject = "".join(f"/O={o}" for o in orgs) + f"/CN={cn}"
        _openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
                 cwd=self.dir)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", str(LIFETIME_DAYS),
                 "-extfile", f"{name}.ext", cwd=self.dir)
        (self.dir / f"{name}.csr").unlink(missing_ok=True)
        (self.dir / f"{name}.ext").unlink(missing_ok=True)
        return out

    def key_pair(self, name: str) -> Cert:
        """An RSA key pair (``NAME.key`` private, ``NAME.pub`` public): the service-account
        token signing key."""
        out = Cert(self.dir / f"{name}.pub", self.dir / f"{name}.key")
        if not out.key.exists():
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                     "-out", f"{name}.key", cwd=self.dir)
            _openssl("pkey", "-in", f"{name}.key", "-pubout", "-out", f"{name}.pub",
                     cwd=self.dir)
        return out
