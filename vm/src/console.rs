//! The serial console: QEMU's output read line by line on two threads, each line stamped
//! with the time since QEMU started, partial lines (prompts) kept apart; and typing on it.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{io_err, VmError};

/// The console so far: every line with the time since QEMU started.
#[derive(Default)]
pub(crate) struct Console {
    pub(crate) lines: Vec<(Duration, String)>,
    pub(crate) partial: String,
    pub(crate) closed: bool,
}

/// The console shared between the reader threads and the [`crate::Vm`].
pub(crate) type Shared = Arc<(Mutex<Console>, Condvar)>;

/// Start the threads that read QEMU's stdout and stderr into `console`; stdout is copied to
/// this process's stdout as it comes when `echo` is set.
pub(crate) fn read_output(console: &Shared, child: &mut Child, started: Instant, echo: bool, label: Option<String>) {
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    for (stream, is_err) in [
        (Box::new(stdout) as Box<dyn Read + Send>, false),
        (Box::new(stderr), true),
    ] {
        let console = console.clone();
        let label = label.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            let mut line_start = true;
            loop {
                buf.clear();
                // Read up to a newline, but hand over partial lines (prompts) too.
                let n = match reader.fill_buf() {
                    Ok([]) | Err(_) => 0,
                    Ok(b) => {
                        let upto = b.iter().position(|&c| c == b'\n').map_or(b.len(), |i| i + 1);
                        buf.extend_from_slice(&b[..upto]);
                        upto
                    }
                };
                if n == 0 {
                    break;
                }
                reader.consume(n);
                if echo && !is_err {
                    let mut o = std::io::stdout().lock();
                    match &label {
                        // `buf` holds at most one newline, at its end.
                        Some(l) if line_start => {
                            let _ = write!(o, "{l} | ");
                            let _ = o.write_all(&buf);
                        }
                        _ => {
                            let _ = o.write_all(&buf);
                        }
                    }
                    let _ = o.flush();
                    line_start = buf.ends_with(b"\n");
                }
                let text = String::from_utf8_lossy(&buf).into_owned();
                let (lock, cv) = &*console;
                let mut c = lock.lock().expect("console lock");
                c.partial.push_str(&text);
                while let Some(i) = c.partial.find('\n') {
                    let line = strip_ansi(&c.partial[..i]);
                    c.partial.drain(..=i);
                    c.lines.push((started.elapsed(), line));
                }
                cv.notify_all();
            }
            let (lock, cv) = &*console;
            lock.lock().expect("console lock").closed = true;
            cv.notify_all();
        });
    }
}

/// Remove ANSI escape sequences and carriage returns from console text.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// Types on a VM's serial console; cheap to clone into a thread.
#[derive(Clone)]
pub struct ConsoleInput(Arc<Mutex<ChildStdin>>);

impl ConsoleInput {
    pub(crate) fn new(stdin: Arc<Mutex<ChildStdin>>) -> ConsoleInput {
        ConsoleInput(stdin)
    }

    /// Send text as typed.
    pub fn send(&self, text: &str) -> Result<(), VmError> {
        let mut w = self.0.lock().expect("stdin lock");
        w.write_all(text.as_bytes())
            .and_then(|_| w.flush())
            .map_err(io_err("writing to the console of", "qemu"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[0;32m  OK  \u{1b}[0m] Started x\r"),
            "  OK  ] Started x"
        );
    }
}
