//! `smtplab roster N`: accounts for a class. It writes a users file for N students (`student01`
//! …) with random passwords, an aliases file whose list `class` names them all, and prints a
//! table of logins for the teacher to hand out.
//!
//! Interface:
//! - `roster_main(args)` is `smtplab roster N [--prefix student] [--out class]`.
//! - `Roster::new(n, prefix)` makes the logins; `users_file`, `aliases_file` and `table` are the
//!   three texts.
//!
//! The passwords come from the operating system's random source through OpenSSL (`RAND_bytes`),
//! never from a seeded generator, because a class list printed on paper is only as good as the
//! passwords on it. The alphabet leaves out the look-alikes 0/O, 1/l/I, so a student can type a
//! password read from paper.
//!
//! Standards: RFC 5321 §3.9, §3.9.2

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

/// Letters and digits a student cannot misread on paper.
const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// About 58 bits: more than enough against guessing over a lab network with `--max-errors`.
const PASSWORD_LENGTH: usize = 10;
/// The list that reaches the whole class: `RCPT TO:<class@…>`.
const CLASS_LIST: &str = "class";
const MAX_STUDENTS: usize = 999;

/// One login: the user name and its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub password: String,
}

/// The logins of one class.
#[derive(Debug, Clone)]
struct Roster {
    pub logins: Vec<Login>,
}

impl Roster {
    /// `count` logins named `prefix01`, `prefix02` … (three digits from 100 on).
    pub fn new(count: usize, prefix: &str) -> Result<Roster, String> {
        if count == 0 || count > MAX_STUDENTS {
            return Err(format!(
                "the number of students must be 1 to {MAX_STUDENTS}, not {count}."
            ));
        }
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(format!(
                "--prefix needs lower-case letters only (a local part every client accepts), not '{prefix}'."
            ));
        }
        let width = count.to_string().len().max(2);
        let logins = (1..=count)
            .map(|n| {
                Ok(Login {
                    user: format!("{prefix}{n:0width$}"),
                    password: password()?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Roster { logins })
    }

    /// `user:password` lines, as `--users` reads them.
    fn users_file(&self) -> String {
        let mut text = String::from("# smtplab roster: user:password (keep this file private)\n");
        for login in &self.logins {
            text.push_str(&format!("{}:{}\n", login.user, login.password));
        }
        text
    }

    /// The list `class` naming every student, as `--aliases` reads it.
    fn aliases_file(&self) -> String {
        let users: Vec<&str> = self.logins.iter().map(|l| l.user.as_str()).collect();
        format!(
            "# smtplab roster: mail to {CLASS_LIST}@ reaches every student\n{CLASS_LIST}: {}\n",
            users.join(", ")
        )
    }

    /// The table to print and cut into strips, one login per line.
    pub fn table(&self) -> String {
        let width = self
            .logins
            .iter()
            .map(|l| l.user.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut text = format!("{:<width$}  password\n", "login");
        for login in &self.logins {
            text.push_str(&format!("{:<width$}  {}\n", login.user, login.password));
        }
        text
    }
}

/// A random password over `ALPHABET`; bytes that would bias the choice are thrown away.
fn password() -> Result<String, String> {
    let unbiased_below = 256 - 256 % ALPHABET.len();
    let mut password = String::with_capacity(PASSWORD_LENGTH);
    let mut bytes = [0u8; 32];
    while password.len() < PASSWORD_LENGTH {
        openssl::rand::rand_bytes(&mut bytes)
            .map_err(|e| format!("no random bytes from the system: {e}."))?;
        for &byte in bytes.iter().filter(|&&b| usize::from(b) < unbiased_below) {
            if password.len() < PASSWORD_LENGTH {
                password.push(char::from(ALPHABET[usize::from(byte) % ALPHABET.len()]));
            }
        }
    }
    Ok(password)
}

/// Write a new file readable by its owner only; an existing file is never overwritten, since
/// its passwords may already be handed out.
fn write_private(path: &str, text: &str) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {path}: {e} (remove it or choose --out)."))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {path}: {e}."))
}

const USAGE: &str = "usage: smtplab roster N [--prefix student] [--out class]";

/// `smtplab roster N [--prefix student] [--out class]`: writes OUT.users and OUT.aliases and
/// prints the table of logins.
pub fn roster_main(args: &[String]) -> i32 {
    let mut options = getopts::Options::new();
    options.optopt("", "prefix", "login prefix (default student)", "WORD");
    options.optopt("", "out", "file name stem (default class)", "NAME");
    let parsed = options
        .parse(args)
        .map_err(|e| e.to_string())
        .and_then(|m| {
            let count = match m.free.as_slice() {
                [n] => n
                    .parse::<usize>()
                    .map_err(|_| format!("'{n}' is not a number")),
                _ => Err("give the number of students".to_string()),
            }?;
            let prefix = m.opt_str("prefix").unwrap_or_else(|| "student".into());
            let out = m.opt_str("out").unwrap_or_else(|| CLASS_LIST.into());
            Ok((count, prefix, out))
        });
    let (count, prefix, out) = match parsed {
        Ok(parsed) => parsed,
        Err(why) => {
            eprintln!("smtplab roster: {why}. {USAGE}");
            return 2;
        }
    };
    match write_roster(count, &prefix, &out) {
        Ok(table) => {
            print!("{table}");
            0
        }
        Err(why) => {
            eprintln!("smtplab roster: {why}");
            1
        }
    }
}

fn write_roster(count: usize, prefix: &str, out: &str) -> Result<String, String> {
    let roster = Roster::new(count, prefix)?;
    let (users, aliases) = (format!("{out}.users"), format!("{out}.aliases"));
    write_private(&users, &roster.users_file())?;
    write_private(&aliases, &roster.aliases_file())?;
    Ok(format!(
        "{}\nWrote {users} and {aliases} (the list {CLASS_LIST} names all {count}).\n\
         Serve the room: smtplab --lab --listen 0.0.0.0:2525 --users {users} --aliases {aliases}\n",
        roster.table()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_numbered_and_passwords_differ() {
        let roster = Roster::new(12, "student").unwrap();
        assert_eq!(roster.logins[0].user, "student01");
        assert_eq!(roster.logins[11].user, "student12");
        assert_eq!(Roster::new(100, "s").unwrap().logins[0].user, "s001");
        let passwords: std::collections::BTreeSet<&str> =
            roster.logins.iter().map(|l| l.password.as_str()).collect();
        assert_eq!(passwords.len(), 12, "every student a password of their own");
        for login in &roster.logins {
            assert_eq!(login.password.len(), PASSWORD_LENGTH);
            assert!(login.password.bytes().all(|b| ALPHABET.contains(&b)));
        }
    }

    #[test]
    fn files_name_every_student_and_the_list_class() {
        let roster = Roster::new(3, "student").unwrap();
        let aliases = roster.aliases_file();
        assert!(
            aliases.contains("class: student01, student02, student03\n"),
            "{aliases}"
        );
        let users = roster.users_file();
        assert_eq!(
            users.lines().filter(|l| l.starts_with("student")).count(),
            3
        );
        let table = roster.table();
        assert!(table.starts_with("login      password\n"), "{table}");
        assert!(table.contains(&roster.logins[2].password));
    }

    #[test]
    fn bad_counts_and_prefixes_are_one_sentence() {
        assert!(Roster::new(0, "student").is_err());
        assert!(Roster::new(1000, "student").is_err());
        assert!(Roster::new(3, "Stu dent").unwrap_err().contains("--prefix"));
    }
}
