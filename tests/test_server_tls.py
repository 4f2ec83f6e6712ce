"""TLS between a host and its servers: `?sslmode=verify-full&sslrootcert=FILE` on each entry.

A server of its own here, with `ssl = on` and a certificate this test makes (its own certificate
authority, signed for 127.0.0.1). The server's view is the oracle that the connection is
encrypted (`pg_stat_ssl`); a certificate from another authority, or made out to another host
name, is refused before any password could be sent, with a message that names the server and
says what failed; so is a server that does not speak TLS at all. Nothing is stored in any of
those cases.
"""
import shutil
import subprocess
import tempfile
from pathlib import Path

import apsw
import pytest

import pg_servers
from crash_writer import image
from harness import connect
from test_server_tables import create, stored_schema


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def authority(folder, name):
    """A certificate authority: (certificate, key) files in `folder`."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=folder)
    return folder / f"{name}.crt", folder / f"{name}.key"


def server_certificate(folder, name, ca, subject_alt_name):
    """A server certificate signed by `ca` for `subject_alt_name` (say IP:127.0.0.1), readable
    by the postgres user only, as the server insists."""
    ca_crt, ca_key = ca
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=folder)
    (folder / f"{name}.ext").write_text(f"subjectAltName={subject_alt_name}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca_crt), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=folder)
    for f in (f"{name}.crt", f"{name}.key"):
        shutil.chown(folder / f, "postgres", "postgres")
        (folder / f).chmod(0o600)
    return folder / f"{name}.crt", folder / f"{name}.key"


@pytest.fixture(scope="module")
def tls():
    """A server with TLS on, the authority that signed its certificate for 127.0.0.1, another
    authority, and a server without TLS."""
    if not pg_servers.available():
        pytest.skip("PostgreSQL server binaries are not installed")
    # Outside pytest's own folders, which the postgres user may not enter.
    folder = Path(tempfile.mkdtemp(prefix="imagestore-tls-"))
    try:
        folder.chmod(0o755)
        ca, other_ca = authority(folder, "ca"), authority(folder, "other-ca")
        crt, key = server_certificate(folder, "server", ca, "IP:127.0.0.1")
        settings = f"ssl = on\nssl_cert_file = '{crt}'\nssl_key_file = '{key}'\n"
        with pg_servers.servers(1, settings) as (server,), pg_servers.servers(1) as (plain,):
            server.create_database("tls")
            plain.create_database("tls")
            yield {"server": server, "plain": plain, "ca": ca[0], "other_ca": other_ca[0]}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def entry(server, root_cert):
    return f"{server.url('tls')}?sslmode=verify-full&sslrootcert={root_cert}"


def test_a_table_reaches_its_server_over_verified_tls(tmp_path, tls):
    con = connect(tmp_path / "a.db")
    create(con, entry(tls["server"], tls["ca"]))
    data = image(1)[2]
    con.execute("INSERT INTO t(id, data) VALUES (1, ?)", (data,))
    assert con.execute("SELECT data FROM t WHERE id = 1").fetchone() == (data,)
    encrypted = tls["server"].psql(
        "SELECT string_agg(s.ssl::text, ',') FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        "WHERE a.application_name = 'imagestore'", "tls").strip()
    assert encrypted and set(encrypted.split(",")) == {"true"}, encrypted
    # The CREATE statement keeps the options: the table opens again the same way.
    con.close()
    again = connect(tmp_path / "a.db")
    assert again.execute("SELECT count(*) FROM t").fetchone() == (1,)


CASES = {
    "a certificate another authority signed": ("other_ca", "server", "invalid peer certificate: UnknownIssuer"),
    "a server that does not speak TLS": ("ca", "plain", "server does not support TLS"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_server_that_cannot_be_verified_is_refused_and_nothing_is_stored(tmp_path, tls, case):
    root_cert, server, message = CASES[case]
    con = connect(tmp_path / "a.db")
    with pytest.raises(apsw.Error, match=message) as caught:
        create(con, entry(tls[server], tls[root_cert]), table="v")
    assert f"127.0.0.1:{tls[server].port}" in str(caught.value)
    assert "USING imagestore" not in stored_schema(con)


def test_a_certificate_for_another_host_name_is_refused(tmp_path, tls):
    # The same server reached as "localhost": its certificate names 127.0.0.1 only.
    url = entry(tls["server"], tls["ca"]).replace("127.0.0.1", "localhost")
    con = connect(tmp_path / "a.db")
    with pytest.raises(apsw.Error, match='certificate not valid for name "localhost"'):
        create(con, url, table="w")
    assert "USING imagestore" not in stored_schema(con)


def test_a_missing_certificate_authority_file_is_named(tmp_path, tls):
    con = connect(tmp_path / "a.db")
    missing = tmp_path / "nowhere.crt"
    with pytest.raises(apsw.Error, match=f"certificate authority file {missing} cannot be read"):
        create(con, entry(tls["server"], missing), table="x")
