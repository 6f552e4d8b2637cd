//! `watch --exec "CMD ARGS"`: the application as a child process. The command is split into words the way a
//! shell would (quotes and backslashes honoured) but run without a shell, so it works in a `FROM scratch`
//! container.

use std::process::{Child, Command};

use crate::error::{Error, Result};

/// Splits `cmd` into words: whitespace separates, `'...'` is literal, `"..."` honours `\"`, `\\`, `\$` and
/// `` \` ``, and a backslash outside quotes takes the next character literally.
pub fn parse(cmd: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = cmd.chars();
    let bad = |why: &str| Error::Usage(format!("--exec: {why} in '{cmd}'"));
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(bad("unterminated single quote")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(bad("unterminated double quote")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(bad("unterminated double quote")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(bad("trailing backslash")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.is_empty() {
        return Err(Error::Usage("--exec: empty command".into()));
    }
    Ok(words)
}

/// The running application.
pub struct App {
    child: Child,
    terminated: bool,
}

/// Starts `argv` with walrust's stdin, stdout, stderr and environment.
pub fn spawn(argv: &[String]) -> Result<App> {
    let (program, args) = argv.split_first().ok_or_else(|| Error::Usage("--exec: empty command".into()))?;
    let child = Command::new(program)
        .args(args)
        .spawn()
        .map_err(|e| Error::io(format!("--exec: cannot start '{program}'"), e))?;
    crate::log::info(&format!("started the application (pid {}): {}", child.id(), argv.join(" ")));
    Ok(App { child, terminated: false })
}

impl App {
    /// The application's exit status once it has exited (128 + N when killed by signal N, as shells report).
    pub fn exited(&mut self) -> Result<Option<i32>> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.try_wait().map_err(|e| Error::io("waiting for the application", e))?;
        Ok(status.map(|s| s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))))
    }

    /// Passes a stop request on to the application as SIGTERM (once).
    pub fn terminate(&mut self) {
        if self.terminated {
            return;
        }
        self.terminated = true;
        crate::log::info(&format!("passing the stop signal on to the application (pid {})", self.child.id()));
        // SAFETY: kill(2) with a pid we own (our child, not yet reaped) and a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        if rc != 0 {
            crate::log::warn(&format!("could not signal the application: {}", std::io::Error::last_os_error()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(parse("app --port 8080").unwrap(), ["app", "--port", "8080"]);
        assert_eq!(parse("  a  'b c'  \"d \\\"e\\\" $f\" g\\ h ''").unwrap(), ["a", "b c", "d \"e\" $f", "g h", ""]);
        assert_eq!(parse("sh -c 'sleep 1; exit 3'").unwrap(), ["sh", "-c", "sleep 1; exit 3"]);
        for bad in ["", "   ", "'open", "\"open", "trailing\\"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
