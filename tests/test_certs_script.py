"""certs/make-dev-certs.sh issues a CA and host certificates that our own checks accept."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from gateway.identity import spiffe_id_from_cert, verify_issued_by

SCRIPT = Path(__file__).resolve().parents[1] / "certs" / "make-dev-certs.sh"
HOST = "spiffe://org-a.example/cluster/east/gateway"


def test_script_issues_a_usable_dev_pki(tmp_path: Path) -> None:
    gateway = Path(sys.executable).parent / "gateway"
    result = subprocess.run(
        ["bash", str(SCRIPT), "org-a.example", HOST],
        env={**os.environ, "GATEWAY": str(gateway), "CERTS_OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    domain = tmp_path / "org-a.example"
    host = domain / "cluster-east-gateway"
    certificate = (host / "host.crt").read_bytes()
    assert str(spiffe_id_from_cert(certificate)) == HOST
    verify_issued_by(certificate, (domain / "ca.crt").read_bytes())
    for key in (domain / "ca.key", host / "host.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, f"{key} must be private"
