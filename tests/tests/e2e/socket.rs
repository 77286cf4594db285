//! The API socket is root-only: mode 0600, and even when its mode is opened up
//! by mistake, ipamd refuses peers that are not root (peer credentials).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use moor_e2e::Testbed;

#[test]
fn socket_is_root_only_even_when_its_mode_is_opened() {
    let tb = Testbed::new();
    let mode = std::fs::metadata(&tb.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode,
        0o600,
        "socket {} has mode {mode:o}",
        tb.socket.display()
    );

    // Open the path to everyone, as a careless operator might.
    let dir = tb.socket.parent().unwrap();
    let dir_mode = std::fs::metadata(dir).unwrap().permissions().mode();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&tb.socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    let as_nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&moor_e2e::bins::bins().ipamctl)
        .arg("--socket")
        .arg(&tb.socket)
        .args(["tor", "list"])
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&as_nobody.stderr);
    assert_eq!(
        as_nobody.status.code(),
        Some(1),
        "non-root peer got through: {stderr}"
    );
    assert!(as_nobody.stdout.is_empty());

    // Root still gets in, and ipamd said why it dropped the other one.
    let ok = tb.ipamctl(&["tor", "list"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
    let log = std::fs::read_to_string(&tb.log).unwrap_or_default();
    assert!(
        log.contains("refused a connection from a non-root peer"),
        "ipamd log has no refusal:\n{log}"
    );
}
