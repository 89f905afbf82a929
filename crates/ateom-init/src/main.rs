//! `ateom-init`: the PID 1 of ateom's microVM guests. See the library docs (`ateom_init`)
//! for what it does and the contract with the host; `pid1` is the implementation.

/// Writes one `ateom-init: ...` line to the console (stderr). Never panics.
macro_rules! say {
    ($($arg:tt)*) => { $crate::pid1::log::line(format_args!($($arg)*)) };
}

mod pid1;

fn main() {
    let mut args = std::env::args_os().skip(1);
    if let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--version" | "-V") => {
                println!(
                    "ateom-init {} (protocol {})",
                    env!("CARGO_PKG_VERSION"),
                    ateom_init::PROTOCOL_VERSION
                );
                return;
            }
            Some("--help" | "-h") => {
                println!(
                    "ateom-init {}: PID 1 of ateom's microVM guests.\n\
                     Boot a kernel with init={} and the ateom.* parameters; it reads the workload from {}.\n\
                     It refuses to run as anything but PID 1.",
                    env!("CARGO_PKG_VERSION"),
                    ateom_init::INIT_PATH,
                    ateom_init::CONFIG_PATH
                );
                return;
            }
            // The kernel passes command-line words it does not understand (and without '=')
            // to init as arguments: ignore them.
            _ => {}
        }
    }
    let pid = std::process::id();
    if pid != 1 {
        say!(
            "refusing to run: this is pid {pid}, not 1 (ateom-init mounts, reconfigures and reboots the machine it runs on; it belongs in a microVM guest)"
        );
        std::process::exit(2);
    }
    let stop = pid1::run();
    pid1::shutdown::power_off(&stop)
}
