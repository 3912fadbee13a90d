//! The users of `[auth]`: names and SHA-256 password digests (as Redis
//! ACL keeps them), checked without an early exit. The session's gate
//! (`session::auth`) answers AUTH and HELLO with them.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::config::AuthConfig;

/// The users of `[auth]`, by name.
#[derive(Debug)]
pub struct Users {
    digests: HashMap<Vec<u8>, [u8; 32]>,
}

impl Users {
    /// From a validated config (64 hex digits per user).
    pub fn new(config: &AuthConfig) -> Users {
        let digests = config
            .users
            .iter()
            .map(|u| {
                let mut d = [0u8; 32];
                for (i, b) in d.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&u.sha256[2 * i..2 * i + 2], 16).unwrap_or(0);
                }
                (u.name.as_bytes().to_vec(), d)
            })
            .collect();
        Users { digests }
    }

    /// Whether `pass` is `user`'s password.
    pub fn check(&self, user: &[u8], pass: &[u8]) -> bool {
        let got: [u8; 32] = Sha256::digest(pass).into();
        let want = self.digests.get(user);
        // The digest is compared in full even for an unknown user.
        let expected = want.copied().unwrap_or([0u8; 32]);
        let diff = got
            .iter()
            .zip(&expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0 && want.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthUser;

    fn users() -> Users {
        // `echo -n s3cret | sha256sum`
        Users::new(&AuthConfig {
            users: vec![AuthUser {
                name: "app".into(),
                sha256: "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0".into(),
            }],
        })
    }

    #[test]
    fn checks_name_and_password() {
        let u = users();
        assert!(u.check(b"app", b"s3cret"));
        assert!(!u.check(b"app", b"s3cret "));
        assert!(!u.check(b"default", b"s3cret"));
        assert!(!u.check(b"other", b""));
    }
}
