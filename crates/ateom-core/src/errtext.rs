//! How the command-line tools print an error to a user: the message and its causes on one
//! line, without a backtrace (those stay behind `--debug`).

use std::error::Error;

/// The error and its causes joined by `": "`, like anyhow's `{:#}`, except that a cause whose
/// text the previous message already includes is not repeated (some errors print their
/// source themselves).
pub fn chain_line(e: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.last().is_some_and(|prev| prev.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error, bool);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            if self.1 { write!(f, "reading x: {}", self.0) } else { write!(f, "reading x") }
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_are_joined_and_not_repeated() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(chain_line(&Outer(io(), false)), "reading x: entity not found");
        assert_eq!(chain_line(&Outer(io(), true)), "reading x: entity not found");
        assert_eq!(chain_line(&io()), "entity not found");
    }
}
