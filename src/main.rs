//! The `walrust` binary: parse, run, and turn the result into a stable exit code (see README.md).

fn main() {
    let code = match walrust::cli::run(std::env::args_os().skip(1).collect()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walrust: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
