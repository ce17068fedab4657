//! Running shell commands on a VM's logged-in serial console and reading back their output
//! and exit code (the QEMU tests' way into a node that has no network from the host).
//!
//! Each command's output is framed by numbered markers that the shell assembles from two
//! parts, so the echo of the typed command never matches; console lines the kernel printed
//! meanwhile are dropped from the output.

use std::time::Duration;

use crate::{Vm, VmError};

impl Vm {
    /// Run a shell command on a logged-in console and return its output and exit code.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(String, i32), VmError> {
        self.marker += 1;
        let m = self.marker;
        let from = self.lines_len();
        self.send_line(&format!("echo CAIRN{m}''BEGIN; {command}; echo CAIRN{m}''END=$?"))?;
        let begin = self.wait_for_line_from(from, &format!("CAIRN{m}BEGIN"), timeout)?;
        let end = self.wait_for_line_from(begin, &format!("CAIRN{m}END="), timeout)?;
        let lines = self.lines();
        let out: Vec<&str> = lines[begin + 1..end]
            .iter()
            .map(|l| l.1.as_str())
            .filter(|l| !is_kernel_message(l))
            .collect();
        let code = lines[end]
            .1
            .split(&format!("CAIRN{m}END="))
            .nth(1)
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(-1);
        Ok((out.join("\n"), code))
    }
}

/// A console line the kernel printed (`[   51.074887] …`), as opposed to a program's output.
pub fn is_kernel_message(line: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix('[') else {
        return false;
    };
    let Some((stamp, _)) = rest.split_once("] ") else {
        return false;
    };
    let stamp = stamp.trim_start();
    stamp.split_once('.').is_some_and(|(s, us)| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && us.len() == 6
            && us.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_messages_are_told_from_command_output() {
        assert!(is_kernel_message(
            "[   51.074887] cairn-node[282]: cairn: boot deadline: reached"
        ));
        assert!(is_kernel_message("[12345.000001] rcu: stall"));
        for out in [
            "good",
            "[x] item",
            "[   51.07] short",
            "0123456789abcdef0123456789abcdef",
            "[ 1.123456]no-space",
        ] {
            assert!(!is_kernel_message(out), "{out}");
        }
    }
}
