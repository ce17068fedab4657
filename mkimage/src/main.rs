//! `cairn`: parse arguments and dispatch; everything else lives in the library.

fn main() {
    let code = cairn_mkimage::cli::run(
        std::env::args_os().collect(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    std::process::exit(code);
}
