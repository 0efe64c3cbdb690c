//! TLS to the server per sslmode, against a real server with a CA and a separate leaf certificate.

use crate::support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use postgres_agent::db::Db;
use support::{agent_config, rt, PgServer};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a leaf for `san` (e.g. "DNS:localhost,IP:127.0.0.1"), written into the data directory.
fn enable_tls(server: &PgServer, san: &str) -> std::path::PathBuf {
    let dir = &server.data_dir;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=agent-test-ca",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=agent-test-server",
    ]);
    openssl(dir, &csr);
    std::fs::write(dir.join("ext.cnf"), format!("subjectAltName={san}\n")).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let meta = std::fs::metadata(dir).unwrap();
    for f in ["server.key", "server.crt", "ca.crt"] {
        let p = dir.join(f);
        std::os::unix::fs::chown(&p, Some(meta.uid()), Some(meta.gid())).unwrap();
    }
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    server.psql("postgres", "ALTER SYSTEM SET ssl = on");
    server.psql("postgres", "ALTER SYSTEM SET ssl_cert_file = 'server.crt'");
    server.psql("postgres", "ALTER SYSTEM SET ssl_key_file = 'server.key'");
    server.psql("postgres", "SELECT pg_reload_conf()");
    // The reload is asynchronous: wait until new sessions see it.
    for _ in 0..50 {
        if server.psql("postgres", "SHOW ssl") == "on" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    dir.join("ca.crt")
}

/// Connects with the given [postgres] settings; Ok(ssl in use) or Err(message).
fn connect(server: &PgServer, extra: &str) -> Result<bool, String> {
    let state = tempfile::tempdir().unwrap();
    let mut config = agent_config(server, state.path(), "");
    let ini = format!(
        "[postgres]\nport = {}\nuser = postgres\n{extra}",
        server.port
    );
    let path = state.path().join("tls.ini");
    std::fs::write(&path, ini).unwrap();
    let tls =
        postgres_agent::config::Config::load_with(Some(&path), Vec::<(String, String)>::new())
            .unwrap();
    config.postgres = tls.postgres;
    rt().block_on(async {
        let db = Db::new(&config.postgres, &config.safety).map_err(|e| e.to_string())?;
        let mut s = db.session().await.map_err(|e| e.to_string())?;
        let rows = s
            .query(
                "ssl",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows[0].get::<_, bool>(0))
    })
}

#[test]
fn sslmodes_against_a_tls_server() {
    let server = PgServer::start();
    let ca = enable_tls(&server, "DNS:localhost,IP:127.0.0.1");
    let ca = ca.display();
    assert_eq!(
        connect(&server, "host = 127.0.0.1\nsslmode = disable\n"),
        Ok(false)
    );
    assert_eq!(
        connect(&server, "host = 127.0.0.1\nsslmode = prefer\n"),
        Ok(true)
    );
    assert_eq!(
        connect(&server, "host = 127.0.0.1\nsslmode = require\n"),
        Ok(true)
    );
    assert_eq!(
        connect(
            &server,
            &format!("host = localhost\nsslmode = verify-full\nsslrootcert = {ca}\n")
        ),
        Ok(true)
    );
    assert_eq!(
        connect(
            &server,
            &format!("host = 127.0.0.1\nsslmode = verify-ca\nsslrootcert = {ca}\n")
        ),
        Ok(true)
    );
    // The test CA is not in the system store.
    let err = connect(&server, "host = localhost\nsslmode = verify-full\n").unwrap_err();
    assert!(err.contains("localhost"), "{err}");
    // A missing CA file is a clear setup error.
    let err = connect(
        &server,
        "host = localhost\nsslmode = verify-full\nsslrootcert = /nonexistent/ca.crt\n",
    )
    .unwrap_err();
    assert!(err.contains("/nonexistent/ca.crt"), "{err}");
}

#[test]
fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let server = PgServer::start();
    let ca = enable_tls(&server, "DNS:db.example.test");
    let ca = ca.display();
    assert_eq!(
        connect(
            &server,
            &format!("host = 127.0.0.1\nsslmode = verify-ca\nsslrootcert = {ca}\n")
        ),
        Ok(true)
    );
    let err = connect(
        &server,
        &format!("host = localhost\nsslmode = verify-full\nsslrootcert = {ca}\n"),
    )
    .unwrap_err();
    assert!(
        err.to_lowercase().contains("cert") || err.contains("name"),
        "{err}"
    );
}

#[test]
fn require_fails_against_a_server_without_tls() {
    let server = PgServer::start();
    let err = connect(&server, "host = 127.0.0.1\nsslmode = require\n").unwrap_err();
    assert!(err.contains("127.0.0.1"), "{err}");
    assert_eq!(
        connect(&server, "host = 127.0.0.1\nsslmode = prefer\n"),
        Ok(false)
    );
}
