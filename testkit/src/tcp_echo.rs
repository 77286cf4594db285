//! A TCP echo across two network namespaces: TCP, not only ping, crosses a
//! datapath (full-size segments with right checksums).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::netns::spawn_in_netns;

/// Sends `len` bytes over TCP from the netns at `client` to an echo server
/// in the netns at `server` listening on `ip`:7777, and checks what comes
/// back.
pub fn tcp_echo(client: PathBuf, server: PathBuf, ip: Ipv4Addr, len: usize) -> Result<(), String> {
    const WAIT: Duration = Duration::from_secs(5);
    let addr = SocketAddr::from((ip, 7777));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let srv = spawn_in_netns(server, move || -> std::io::Result<()> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        ready_tx.send(()).expect("the client waits");
        let deadline = Instant::now() + WAIT;
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(std::io::Error::other("no connection within 5 s"));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(WAIT))?;
        let mut buf = vec![0u8; len];
        conn.read_exact(&mut buf)?;
        conn.write_all(&buf)
    });
    ready
        .recv_timeout(WAIT)
        .map_err(|_| "the server did not listen".to_string())?;
    let cli = spawn_in_netns(client, move || -> std::io::Result<()> {
        let mut conn = TcpStream::connect_timeout(&addr, WAIT)?;
        conn.set_read_timeout(Some(WAIT))?;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        conn.write_all(&data)?;
        let mut back = vec![0u8; len];
        conn.read_exact(&mut back)?;
        if back != data {
            return Err(std::io::Error::other("the data came back different"));
        }
        Ok(())
    });
    let c = cli
        .join()
        .expect("client thread")
        .map_err(|e| format!("client: {e}"));
    let s = srv
        .join()
        .expect("server thread")
        .map_err(|e| format!("server: {e}"));
    c.and(s)
}
