"""
certs.py — test PKI for the TLS integration tests, minted at test time with
the `openssl` command line tool (standard library + subprocess only).

Everything is ECDSA P-256. A CA is self-signed (CA:true, keyCertSign); a leaf
(an X509-SVID when it carries one spiffe:// URI SAN) is signed by a CA with
`openssl ca`, which takes explicit -startdate/-enddate (this openssl, 3.0,
has no `x509 -not_before/-not_after`), so expired and not-yet-valid
certificates are real ones, not faked clocks.

    pki = PKI(tmpdir)
    ca1 = pki.ca("ca1")
    leaf = pki.leaf("server", ca1, uris=["spiffe://td.test/ns/shop/sa/backend"],
                    dns=["backend.test"])
    leaf.cert, leaf.key, leaf.chain, leaf.serial
    pki.bundle("ca12", ca1, ca2)          # one PEM file with both CAs
    pki.mismatched_key("stray")           # a key that matches no certificate

Leaves share one key per PKI unless `own_key=True` (key generation is cheap,
but a shared key keeps the module fast and lets a test replace only the
certificate file of a pair).
"""

import datetime as _dt
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def _run(*args, cwd=None) -> str:
    res = subprocess.run([OPENSSL] + [str(a) for a in args], capture_output=True, text=True,
                         cwd=cwd, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed ({res.returncode}):\n"
                           f"{res.stderr}")
    return res.stdout


def openssl_version() -> str:
    return _run("version").strip()


def _asn1_time(t: _dt.datetime) -> str:
    """YYYYMMDDHHMMSSZ (GeneralizedTime, accepted by `openssl ca` for any year)."""
    return t.astimezone(_dt.timezone.utc).strftime("%Y%m%d%H%M%SZ")


def normalize_serial(s: str) -> str:
    """'serial=0A1B' / '0a:1b' / '0x0A1B' -> 'a1b' (lower case, no separators or leading 0s)."""
    s = s.strip().lower()
    if s.startswith("serial="):
        s = s[len("serial="):]
    if s.startswith("0x"):
        s = s[2:]
    s = s.replace(":", "").lstrip("0")
    return s or "0"


@dataclass
class CA:
    name: str
    cert: Path
    key: Path
    dir: Path          # the `openssl ca` database of this CA
    conf: Path
    subject: str


@dataclass
class Leaf:
    name: str
    cert: Path         # the leaf alone
    key: Path
    chain: Path        # leaf + its issuing CA (PEM, leaf first)
    serial: str        # normalized hex (see normalize_serial)
    subject: str
    uris: List[str]
    not_before: _dt.datetime
    not_after: _dt.datetime
    issuer: CA

    @property
    def spiffe_id(self) -> Optional[str]:
        return self.uris[0] if len(self.uris) == 1 and self.uris[0].startswith("spiffe://") \
            else None


_CA_CONF = """\
[ca]
default_ca = CA_default

[CA_default]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no

[policy_any]
organizationName = optional
organizationalUnitName = optional
commonName = optional
"""


class PKI:
    def __init__(self, directory):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._shared_key: Optional[Path] = None

    # -- keys
    def new_key(self, name: str) -> Path:
        path = self.dir / f"{name}.key"
        # PKCS#8 PEM ("BEGIN PRIVATE KEY"), what most deployments hand out
        _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", path)
        return path

    def shared_key(self) -> Path:
        if self._shared_key is None:
            self._shared_key = self.new_key("shared-leaf")
        return self._shared_key

    def mismatched_key(self, name: str = "mismatched") -> Path:
        """A fresh P-256 key that matches no certificate of this PKI."""
        return self.new_key(name)

    # -- CAs
    def ca(self, name: str, cn: Optional[str] = None, days: int = 3650) -> CA:
        d = self.dir / f"{name}.db"
        (d / "newcerts").mkdir(parents=True, exist_ok=True)
        (d / "index.txt").write_text("")
        (d / "serial").write_text("1000\n")
        conf = d / "ca.cnf"
        conf.write_text(_CA_CONF.format(dir=d))
        key = self.new_key(name)
        cert = self.dir / f"{name}.pem"
        subject = f"/O=sidekick tests/CN={cn or name}"
        ext = d / "ca-ext.cnf"
        ext.write_text("[v3_ca]\nbasicConstraints = critical, CA:true\n"
                       "keyUsage = critical, keyCertSign, cRLSign\n"
                       "subjectKeyIdentifier = hash\n")
        _run("req", "-new", "-x509", "-key", key, "-out", cert, "-days", days, "-subj", subject,
             "-sha256", "-config", ext, "-extensions", "v3_ca")
        return CA(name, cert, key, d, conf, subject)

    def bundle(self, name: str, *cas: CA) -> Path:
        """One PEM trust bundle with the given CAs, in order."""
        path = self.dir / f"{name}.pem"
        path.write_text("".join(Path(c.cert).read_text() for c in cas))
        return path

    # -- leaves
    def leaf(self, name: str, ca: CA, uris: Sequence[str] = (), dns: Sequence[str] = (),
             ips: Sequence[str] = (), cn: Optional[str] = None, validity: str = "valid",
             not_before: Optional[_dt.datetime] = None, not_after: Optional[_dt.datetime] = None,
             ca_true: bool = False, eku: Iterable[str] = ("serverAuth", "clientAuth"),
             own_key: bool = False, key: Optional[Path] = None) -> Leaf:
        """A leaf certificate signed by `ca`.

        validity: "valid" (an hour ago .. 30 days ahead), "expired" (ended an
        hour ago), "future" (starts in 30 days); explicit not_before/not_after
        override it. ca_true: basicConstraints CA:true (not an SVID). eku: the
        extendedKeyUsage values (empty: no EKU extension)."""
        now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
        if validity == "valid":
            nb, na = now - _dt.timedelta(hours=1), now + _dt.timedelta(days=30)
        elif validity == "expired":
            nb, na = now - _dt.timedelta(days=30), now - _dt.timedelta(hours=1)
        elif validity == "future":
            nb, na = now + _dt.timedelta(days=30), now + _dt.timedelta(days=60)
        else:
            raise ValueError(f"validity {validity!r}")
        nb = not_before or nb
        na = not_after or na

        if key is None:
            key = self.new_key(name) if own_key else self.shared_key()
        csr = self.dir / f"{name}.csr"
        subject = f"/O=sidekick tests/CN={cn or name}"
        _run("req", "-new", "-key", key, "-out", csr, "-subj", subject)

        sans = [f"URI:{u}" for u in uris] + [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        lines = ["[leaf]"]
        if ca_true:
            lines.append("basicConstraints = critical, CA:true")
            lines.append("keyUsage = critical, digitalSignature, keyCertSign")
        else:
            lines.append("basicConstraints = critical, CA:false")
            lines.append("keyUsage = critical, digitalSignature, keyAgreement")
        eku = list(eku)
        if eku:
            lines.append("extendedKeyUsage = " + ", ".join(eku))
        if sans:
            lines.append("subjectAltName = " + ", ".join(sans))
        lines.append("subjectKeyIdentifier = hash")
        lines.append("authorityKeyIdentifier = keyid")
        ext = self.dir / f"{name}.ext"
        ext.write_text("\n".join(lines) + "\n")

        cert = self.dir / f"{name}.pem"
        _run("ca", "-batch", "-notext", "-config", ca.conf, "-cert", ca.cert, "-keyfile", ca.key,
             "-in", csr, "-out", cert, "-startdate", _asn1_time(nb), "-enddate", _asn1_time(na),
             "-extfile", ext, "-extensions", "leaf", "-rand_serial")
        serial = normalize_serial(_run("x509", "-in", cert, "-noout", "-serial"))
        chain = self.dir / f"{name}.chain.pem"
        chain.write_text(cert.read_text() + Path(ca.cert).read_text())
        return Leaf(name, cert, Path(key), chain, serial, subject, list(uris), nb, na, ca)


def cert_serial(path) -> str:
    return normalize_serial(_run("x509", "-in", path, "-noout", "-serial"))


def der_serial(der: bytes) -> str:
    """The serial of a DER certificate (what ssl.getpeercert(True) returns)."""
    res = subprocess.run([OPENSSL, "x509", "-inform", "DER", "-noout", "-serial"], input=der,
                         capture_output=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.decode(errors="replace"))
    return normalize_serial(res.stdout.decode())


def copy_pair(leaf: Leaf, directory, cert_name: str = "tls.crt", key_name: str = "tls.key",
              chain: bool = False):
    """Copies a leaf's cert (or chain) and key into `directory` (for tests
    that rewrite the files later); returns (cert path, key path)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    c, k = d / cert_name, d / key_name
    shutil.copyfile(leaf.chain if chain else leaf.cert, c)
    shutil.copyfile(leaf.key, k)
    return c, k


def atomic_write(path, data: bytes):
    """Writes `data` to a temporary file next to `path`, then renames it over."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
