//! `[ssh]`: the public keys allowed to log in, each checked down to its key data.

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawSsh {
    #[serde(default)]
    pub(crate) authorized_keys: Vec<Spanned<String>>,
}

/// SSH public key types sshd accepts.
const SSH_KEY_TYPES: [&str; 8] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

/// Check an authorized_keys line (`TYPE BASE64 [comment]`, no options) and return it
/// normalized to one line.
pub fn ssh_key(line: &str) -> Result<String, String> {
    use base64::Engine;
    let line = line.trim();
    if line.contains('\n') || line.contains('\r') {
        return Err("one key per list item".into());
    }
    if line.contains('\0') {
        return Err("the key holds a NUL character".into());
    }
    let mut words = line.split_whitespace();
    let ty = words.next().ok_or("the key is empty")?;
    if !SSH_KEY_TYPES.contains(&ty) {
        return Err(format!(
            "'{ty}' is not an SSH public key type (options before the key are not supported)"
        ));
    }
    let blob = words.next().ok_or("the key has no base64 part")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| "the key's base64 part does not decode".to_string())?;
    // The blob is a sequence of SSH strings (u32 length, bytes): the type again, then the
    // key's fields; a truncated or padded blob is refused.
    let mut fields = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let len = rest
            .get(..4)
            .map(|l| u32::from_be_bytes(l.try_into().expect("4 bytes")) as usize)
            .filter(|l| *l <= rest.len() - 4)
            .ok_or_else(|| format!("the key's data is cut off (not a whole {ty} key)"))?;
        fields.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    if fields.first() != Some(&ty.as_bytes()) {
        return Err(format!("the key's data is not a {ty} key"));
    }
    let curve_point = |curve: &str, len: usize| {
        fields.len() >= 3 && fields[1] == curve.as_bytes() && fields[2].len() == len && fields[2][0] == 4
    };
    let whole = match ty {
        "ssh-ed25519" => fields.len() == 2 && fields[1].len() == 32,
        "sk-ssh-ed25519@openssh.com" => fields.len() == 3 && fields[1].len() == 32,
        "ssh-rsa" => fields.len() == 3 && fields[2].len() >= 128,
        "ecdsa-sha2-nistp256" => fields.len() == 3 && curve_point("nistp256", 65),
        "ecdsa-sha2-nistp384" => fields.len() == 3 && curve_point("nistp384", 97),
        "ecdsa-sha2-nistp521" => fields.len() == 3 && curve_point("nistp521", 133),
        "sk-ecdsa-sha2-nistp256@openssh.com" => fields.len() == 4 && curve_point("nistp256", 65),
        "ssh-dss" => fields.len() == 5,
        _ => false,
    };
    if !whole {
        return Err(format!("the key's data is not a whole {ty} key (cut off or padded)"));
    }
    let comment: Vec<&str> = words.collect();
    if comment.iter().any(|w| w.chars().any(|c| c.is_control())) {
        return Err("the key's comment holds a control character".into());
    }
    let mut normalized = vec![ty, blob];
    normalized.extend(comment);
    Ok(normalized.join(" "))
}
