//! Scripted faults: `--fault RULE` makes the server refuse at a chosen point, the same way every
//! time, so a student can test the error handling of an SMTP client they wrote.
//!
//! Interface:
//! - `Rule::parse(text)` reads one rule; a bad rule is one plain sentence (the server exits 2).
//! - `Counter` counts, per session, how often each point was reached and finds the rule that
//!   fires now (`Counter::check`).
//! - `Rule::reply()` is the reply a rule sends: the code chosen, the enhanced status and text
//!   that usually go with it, and "(scripted fault)" so nobody mistakes it for a real failure.
//! - `greeting_rules(rules)` are the rules the connection applies before the 220 greeting.
//!
//! Rule syntax (counts are per session, starting at 1):
//!
//! ```text
//! RULE   = POINT [":" WHEN] "=" ACTION
//! POINT  = "greeting" / "eod" (the end of the message data) / a verb: "mail", "rcpt", "data", ...
//! WHEN   = N                the Nth time in this session        rcpt:3=452
//!        / "from=" ADDRESS  MAIL with this sender (mail only)   mail:from=spam@x.example=550
//!        / "to=" ADDRESS    RCPT with this recipient (rcpt only)
//!                           (no WHEN: every time)               data=451
//! ACTION = CODE             a 4xx/5xx reply                     eod:1=554
//!        / "close"          drop the connection without a reply greeting=close, data:1=close
//!        / "delay:" SECONDS wait before the greeting            greeting=delay:20
//! ```
//!
//! Standards: RFC 5321 §4.2.3, §3.1, §4.1.4, RFC 3463 §3

use std::collections::BTreeMap;
use std::time::Duration;

use crate::smtp::command::Verb;
use crate::smtp::reply::Reply;

/// The longest delay a rule may ask for: longer than the 5-minute greeting timeout a client
/// should use (RFC 5321 §4.5.3.2.1) would only test patience.
const MAX_DELAY_SECS: u64 = 600;

/// Where in a session a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Point {
    /// Before the 220 greeting (RFC 5321 §3.1).
    Greeting,
    /// A command, before the server handles it.
    Command(Verb),
    /// The end of the message data (after the lone dot, or the last BDAT chunk).
    EndOfData,
}

/// Which occurrence of the point fires the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    Every,
    /// The Nth time in this session (1 is the first).
    Nth(u32),
    /// MAIL FROM with this address (compared without regard to case).
    From(String),
    /// RCPT TO with this address.
    To(String),
}

/// What the server does instead of its normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer this code, with the usual enhanced status and text for it.
    Reply(u16),
    /// Close the connection without a word, as a crashed server would.
    Close,
    /// Wait this long before the greeting.
    Delay(Duration),
}

/// One `--fault` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub point: Point,
    pub when: When,
    pub action: Action,
    /// The rule as it was written, for `--trace`.
    pub text: String,
}

impl Rule {
    // ANCHOR: parse
    /// `POINT [":" WHEN] "=" ACTION`. The action comes after the last `=`, so an address in
    /// `from=` may not contain one.
    pub fn parse(text: &str) -> Result<Rule, String> {
        let bad = |why: String| format!("--fault {text}: {why}.");
        let (left, action) = text
            .rsplit_once('=')
            .ok_or_else(|| bad("a rule looks like rcpt:3=452 or greeting=delay:20".into()))?;
        let (point, when) = match left.split_once(':') {
            Some((point, when)) => (point, Some(when)),
            None => (left, None),
        };
        let point = parse_point(point).map_err(bad)?;
        let when = parse_when(point, when).map_err(bad)?;
        let action = parse_action(point, action).map_err(bad)?;
        Ok(Rule {
            point,
            when,
            action,
            text: text.to_string(),
        })
    }
    // ANCHOR_END: parse

    /// The reply of a `Reply(code)` rule (`None` for close and delay).
    pub fn reply(&self) -> Option<Reply> {
        let Action::Reply(code) = self.action else {
            return None;
        };
        let (status, text) = standard_reply(code, self.point)?;
        Some(Reply::new(code, status, "").text(format!("{text} (scripted fault)")))
    }

    fn matches(&self, count: u32, address: Option<&str>) -> bool {
        match &self.when {
            When::Every => true,
            When::Nth(n) => *n == count,
            When::From(wanted) | When::To(wanted) => {
                address.is_some_and(|a| bare_address(a).eq_ignore_ascii_case(wanted))
            }
        }
    }
}

/// The rules that act before the greeting, in the order given.
pub fn greeting_rules(rules: &[Rule]) -> impl Iterator<Item = &Rule> {
    rules.iter().filter(|r| r.point == Point::Greeting)
}

/// How often each point was reached in one session.
#[derive(Debug, Clone, Default)]
pub struct Counter {
    seen: BTreeMap<Point, u32>,
}

impl Counter {
    /// Count one more arrival at `point` and return the first rule that fires on it.
    /// `address` is the MAIL or RCPT address, for `from=` and `to=` rules.
    pub fn check<'r>(
        &mut self,
        rules: &'r [Rule],
        point: Point,
        address: Option<&str>,
    ) -> Option<&'r Rule> {
        let count = self.seen.entry(point).or_insert(0);
        *count = count.saturating_add(1);
        let count = *count;
        rules
            .iter()
            .find(|rule| rule.point == point && rule.matches(count, address))
    }
}

fn parse_point(name: &str) -> Result<Point, String> {
    match name.to_ascii_lowercase().as_str() {
        "greeting" => Ok(Point::Greeting),
        "eod" => Ok(Point::EndOfData),
        _ => Verb::from_name(name).map(Point::Command).ok_or_else(|| {
            format!(
                "'{name}' is not a point; use greeting, eod, or a verb such as mail, rcpt or data"
            )
        }),
    }
}

fn parse_when(point: Point, when: Option<&str>) -> Result<When, String> {
    let Some(when) = when else {
        return Ok(When::Every);
    };
    if point == Point::Greeting {
        return Err("greeting takes no count: write greeting=close or greeting=delay:20".into());
    }
    if let Some(address) = strip_prefix_ignore_case(when, "from=") {
        return match point {
            Point::Command(Verb::Mail) => Ok(When::From(bare_address(address).to_string())),
            _ => Err("from=ADDRESS only goes with mail, as in mail:from=spam@x.example=550".into()),
        };
    }
    if let Some(address) = strip_prefix_ignore_case(when, "to=") {
        return match point {
            Point::Command(Verb::Rcpt) => Ok(When::To(bare_address(address).to_string())),
            _ => Err("to=ADDRESS only goes with rcpt, as in rcpt:to=bob@localhost=450".into()),
        };
    }
    match when.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(When::Nth(n)),
        _ => Err(format!(
            "'{when}' is not a count from 1 up, from=ADDRESS or to=ADDRESS"
        )),
    }
}

fn parse_action(point: Point, action: &str) -> Result<Action, String> {
    let action = action.to_ascii_lowercase();
    if action == "close" {
        return Ok(Action::Close);
    }
    if let Some(secs) = action.strip_prefix("delay:") {
        if point != Point::Greeting {
            return Err("delay:SECONDS only goes with greeting".into());
        }
        return match secs.parse::<u64>() {
            Ok(n) if n <= MAX_DELAY_SECS => Ok(Action::Delay(Duration::from_secs(n))),
            _ => Err(format!(
                "the delay must be a whole number of seconds up to {MAX_DELAY_SECS}"
            )),
        };
    }
    let code: u16 = action
        .parse()
        .map_err(|_| format!("'{action}' is not a reply code, close, or delay:SECONDS"))?;
    if point == Point::Greeting && code != 421 {
        return Err("the greeting can only be replaced by 421 (RFC 5321 §3.1)".into());
    }
    if standard_reply(code, point).is_none() {
        return Err(format!(
            "{code} is not a refusal smtplab can script; use a code such as 421, 450, 451, 452, 550, 552, 554"
        ));
    }
    Ok(Action::Reply(code))
}

// ANCHOR: standard_reply
/// The enhanced status (RFC 3463 §3) and text that usually go with a refusal code (RFC 5321
/// §4.2.3). Some codes mean different things at different points: 452 to RCPT is "too many
/// recipients", elsewhere "insufficient storage".
fn standard_reply(code: u16, point: Point) -> Option<(&'static str, &'static str)> {
    let rcpt = point == Point::Command(Verb::Rcpt);
    let mail = point == Point::Command(Verb::Mail);
    Some(match code {
        421 => (
            "4.3.2",
            "Service not available, closing transmission channel",
        ),
        450 => ("4.2.0", "Mailbox unavailable, try again later"),
        451 => ("4.3.0", "Local error in processing, try again later"),
        452 if rcpt => ("4.5.3", "Too many recipients"),
        452 => ("4.3.1", "Insufficient system storage"),
        454 => ("4.7.0", "Temporary failure, try again later"),
        500 => ("5.5.2", "Syntax error, command unrecognized"),
        501 => ("5.5.4", "Syntax error in parameters or arguments"),
        502 => ("5.5.1", "Command not implemented"),
        503 => ("5.5.1", "Bad sequence of commands"),
        504 => ("5.5.4", "Command parameter not implemented"),
        530 => ("5.7.0", "Authentication required"),
        550 if mail => ("5.7.1", "Sender rejected"),
        550 if rcpt => ("5.1.1", "No such user here"),
        550 => ("5.7.1", "Requested action not taken"),
        551 => ("5.1.6", "User not local"),
        552 if rcpt => ("5.2.2", "Mailbox full"),
        552 => ("5.3.4", "Message size exceeds fixed limit"),
        553 => ("5.1.3", "Mailbox name not allowed"),
        554 => ("5.6.0", "Transaction failed, message refused"),
        555 => ("5.5.4", "MAIL FROM/RCPT TO parameters not recognized"),
        _ => return None,
    })
}
// ANCHOR_END: standard_reply

/// `<a@b>` and `a@b` name the same address.
fn bare_address(text: &str) -> &str {
    text.trim().trim_start_matches('<').trim_end_matches('>')
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Rule {
        Rule::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_examples_parse() {
        let r = rule("rcpt:3=452");
        assert_eq!(
            (r.point, &r.when, r.action),
            (
                Point::Command(Verb::Rcpt),
                &When::Nth(3),
                Action::Reply(452)
            )
        );
        assert_eq!(rule("data:1=451").action, Action::Reply(451));
        assert_eq!(
            rule("mail:from=spam@x.example=550").when,
            When::From("spam@x.example".into())
        );
        assert_eq!(
            rule("MAIL:FROM=<Spam@X.example>=550").when,
            When::From("Spam@X.example".into())
        );
        assert_eq!(rule("greeting=close").action, Action::Close);
        assert_eq!(
            rule("greeting=delay:20").action,
            Action::Delay(Duration::from_secs(20))
        );
        assert_eq!(rule("eod:1=554").point, Point::EndOfData);
        assert_eq!(rule("data=451").when, When::Every);
        assert_eq!(
            rule("rcpt:to=bob@localhost=450").when,
            When::To("bob@localhost".into())
        );
    }

    #[test]
    fn bad_rules_are_one_sentence() {
        for text in [
            "rcpt:3",
            "rcpt:0=452",
            "rcpt:x=452",
            "bogus:1=452",
            "rcpt:3=250",
            "rcpt:3=499",
            "rcpt:from=a@b=550",
            "mail:to=a@b=550",
            "greeting:2=close",
            "greeting=550",
            "data=delay:5",
            "greeting=delay:abc",
            "greeting=delay:100000",
        ] {
            let error = Rule::parse(text).expect_err(text);
            assert!(error.starts_with(&format!("--fault {text}: ")), "{error}");
            assert!(error.ends_with('.') && !error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn replies_keep_the_standard_status_and_say_they_are_scripted() {
        let reply = rule("rcpt:3=452").reply().unwrap();
        assert_eq!(
            reply.to_string(),
            "452 4.5.3 Too many recipients (scripted fault)\r\n"
        );
        assert_eq!(rule("data:1=452").reply().unwrap().status, "4.3.1");
        assert_eq!(rule("mail:from=a@b=550").reply().unwrap().status, "5.7.1");
        assert_eq!(rule("greeting=close").reply(), None);
    }

    #[test]
    fn counts_are_per_point_and_fire_once() {
        let rules = vec![rule("rcpt:3=452"), rule("mail:from=spam@x.example=550")];
        let mut counter = Counter::default();
        let rcpt = Point::Command(Verb::Rcpt);
        assert!(counter.check(&rules, rcpt, Some("a@b")).is_none());
        assert!(counter.check(&rules, rcpt, Some("a@b")).is_none());
        assert_eq!(
            counter.check(&rules, rcpt, None).map(|r| r.text.as_str()),
            Some("rcpt:3=452")
        );
        assert!(counter.check(&rules, rcpt, None).is_none());
        let mail = Point::Command(Verb::Mail);
        assert!(counter.check(&rules, mail, Some("ok@x.example")).is_none());
        assert!(counter
            .check(&rules, mail, Some("<SPAM@x.example>"))
            .is_some());
        assert_eq!(greeting_rules(&rules).count(), 0);
    }
}
