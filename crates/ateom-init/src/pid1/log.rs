//! Console lines. PID 1's stderr is the console the kernel opened (or `/dev/console`, see
//! [`super::setup::ensure_stdio`]).

use std::fmt;
use std::io::Write;

/// Writes `ateom-init: <args>` and a newline to stderr, ignoring write errors (a PID 1 that
/// panics because the console went away would take the machine down).
pub fn line(args: fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{}{args}", ateom_init::CONSOLE_PREFIX);
    let _ = stderr.flush();
}
