//! A TCP relay on host loopback between agents and a hub, that can be *partitioned*: while
//! cut, no byte moves either way and new connections hang unanswered (like a dropped link,
//! not a refused one); on heal, the connections that lived through the cut are closed and
//! new ones are relayed again.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Proxy {
    pub url: String,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut, so relays of an older epoch close on heal.
    epoch: Arc<AtomicU64>,
}

impl Proxy {
    /// Relay `127.0.0.1:<new port>` to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let url = format!("http://{}", l.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let (c, e, up) = (cut.clone(), epoch.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (c, e, up) = (c.clone(), e.clone(), up.clone());
                std::thread::spawn(move || relay(conn, &up, c, e));
            }
        });
        Proxy { url, cut, epoch }
    }

    pub fn cut(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cut.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn relay(down: TcpStream, upstream: &str, cut: Arc<AtomicBool>, epoch: Arc<AtomicU64>) {
    // A connection made during a cut waits (unanswered) until the heal, then is closed.
    while cut.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let born = epoch.load(Ordering::SeqCst);
    let Ok(up) = TcpStream::connect(upstream) else {
        return;
    };
    let pumps = [
        (down.try_clone(), up.try_clone()),
        (up.try_clone(), down.try_clone()),
    ];
    let mut handles = Vec::new();
    for (from, to) in pumps {
        let (Ok(mut from), Ok(mut to)) = (from, to) else {
            return;
        };
        let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
        let (cut, epoch) = (cut.clone(), epoch.clone());
        handles.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64 << 10];
            loop {
                if epoch.load(Ordering::SeqCst) != born {
                    // Cut since this connection began: hold still until the heal, then drop.
                    while cut.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    break;
                }
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if epoch.load(Ordering::SeqCst) != born {
                            continue; // bytes read during a cut are lost, like dropped packets
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        }));
    }
    for h in handles {
        let _ = h.join();
    }
}
