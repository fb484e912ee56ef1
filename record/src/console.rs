//! The guest console as a recording sees it: a writer that passes the guest's serial output
//! through and keeps a running blake3 hash and byte count of it, so a replay can check that
//! it printed exactly the same bytes.

use std::cell::RefCell;
use std::io::{self, Write};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

/// How many bytes the guest wrote on its console, and their blake3 hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleDigest {
    /// Bytes written.
    pub bytes: u64,
    /// blake3 of all of them, in order.
    pub blake3: [u8; 32],
}

/// The running digest behind a [`ConsoleTap`], readable after the writer was handed to the
/// machine.
#[derive(Clone)]
pub struct ConsoleDigester(Rc<RefCell<(u64, blake3::Hasher)>>);

impl ConsoleDigester {
    /// The digest of everything written so far.
    pub fn digest(&self) -> ConsoleDigest {
        let d = self.0.borrow();
        ConsoleDigest {
            bytes: d.0,
            blake3: *d.1.finalize().as_bytes(),
        }
    }
}

/// A writer that hashes what passes through it on its way to `inner`.
///
/// Bytes are hashed as the guest writes them, before `inner` sees them, so the digest is the
/// guest's output even when the sink fails (a closed pipe).
pub struct ConsoleTap<W: Write> {
    inner: W,
    digest: ConsoleDigester,
}

impl<W: Write> ConsoleTap<W> {
    /// Tap `inner`; the returned digester reads the digest later.
    pub fn new(inner: W) -> (ConsoleTap<W>, ConsoleDigester) {
        let digest = ConsoleDigester(Rc::new(RefCell::new((0, blake3::Hasher::new()))));
        (
            ConsoleTap {
                inner,
                digest: digest.clone(),
            },
            digest,
        )
    }
}

impl<W: Write> Write for ConsoleTap<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Hash only what the sink takes, so a short write is not counted twice; when the
        // sink fails, count the bytes anyway (the guest did write them) and report it.
        match self.inner.write(buf) {
            Ok(n) => {
                let mut d = self.digest.0.borrow_mut();
                d.0 += n as u64;
                d.1.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                let mut d = self.digest.0.borrow_mut();
                d.0 += buf.len() as u64;
                d.1.update(buf);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_covers_every_byte_written() {
        let (mut tap, d) = ConsoleTap::new(Vec::new());
        tap.write_all(b"hello ").unwrap();
        tap.write_all(b"world").unwrap();
        let digest = d.digest();
        assert_eq!(digest.bytes, 11);
        assert_eq!(digest.blake3, *blake3::hash(b"hello world").as_bytes());
        assert_eq!(tap.inner, b"hello world");
    }
}
