//! Lists cut into pages as the API server cuts them (`limit` and `continue`, KEP-365):
//! at most `limit` items, in key order, with `metadata.continue` when more remain and
//! `metadata.remainingItemCount` when the list is not filtered. A continue token goes
//! on after the last key it names; one with a `resourceVersion` beside it, or one that
//! does not decode, is the server's 400; one from before [`FakeKube::compact`] is its
//! 410 `Expired`. Leniency: a later page shows the objects as they are now, where the
//! real server reads every page from the first page's snapshot (so an object changed
//! between pages may show its new state here); a client cannot rely on more than that
//! from a fake it pages through quickly, and nothing here depends on the snapshot.
//! Node and Pod lists are paged; budget and Event lists come whole, as no client here
//! lists more of them than one page holds.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::FakeKube;
use super::status::{bad_request, status_body};

/// The token's version tag, as the real server writes it inside its tokens.
const TOKEN_VERSION: &str = "meta.k8s.io/v1";

/// `storage.ErrCompacted` as the list handler words it for a continue token.
const EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

impl FakeKube {
    /// A write, then a compaction of the store's history up to it, as etcd compacts every
    /// few minutes: continue tokens handed out until now are answered 410 `Expired`.
    pub fn compact(&self) {
        let mut cluster = self.cluster();
        cluster.next_resource_version();
        cluster.compacted_at = cluster.resource_version;
    }
}

/// The server's refusal of a list request's paging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    BadRequest(String),
    Expired,
}

impl Refusal {
    pub(super) fn response(self) -> Response {
        match self {
            Refusal::BadRequest(message) => bad_request(&message),
            Refusal::Expired => status_body(StatusCode::GONE, "Expired", EXPIRED, None),
        }
    }
}

/// What a list request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Paging {
    limit: Option<usize>,
    /// The key the previous page ended on; this page starts after it.
    pub(super) after: Option<String>,
    /// The list's `resourceVersion`: now, or the first page's.
    resource_version: u64,
}

impl Paging {
    /// Reads `limit`, `continue` and `resourceVersion` as the API server does; `Err` is its
    /// answer to a bad combination.
    pub(super) fn of(
        query: &HashMap<String, String>,
        now: u64,
        compacted_at: u64,
    ) -> Result<Paging, Refusal> {
        let limit = match query.get("limit").map(String::as_str) {
            None | Some("") => None,
            Some(text) => match text.parse::<i64>() {
                // Zero or less means "no limit", as in ListOptions.
                Ok(limit) => usize::try_from(limit).ok().filter(|limit| *limit > 0),
                Err(error) => return Err(Refusal::BadRequest(format!("limit: {error}"))),
            },
        };
        let Some(token) = query.get("continue").filter(|token| !token.is_empty()) else {
            return Ok(Paging {
                limit,
                after: None,
                resource_version: now,
            });
        };
        if query
            .get("resourceVersion")
            .is_some_and(|rv| !rv.is_empty() && rv != "0")
        {
            return Err(Refusal::BadRequest(
                "specifying resource version is not allowed when using continue".to_owned(),
            ));
        }
        let (resource_version, after) = decode(token).map_err(|why| {
            Refusal::BadRequest(format!(
                "invalid continue token: continue key is not valid: {why}"
            ))
        })?;
        if resource_version < compacted_at {
            return Err(Refusal::Expired);
        }
        Ok(Paging {
            limit,
            after: Some(after),
            resource_version,
        })
    }

    /// One page of `items` (every matching item after [`Paging::after`], in key order) and
    /// the list's `metadata`. `key` names an item as the token records it; `filtered`
    /// (a selector was given) leaves out `remainingItemCount`, as the server does.
    pub(super) fn cut<T>(
        &self,
        mut items: impl Iterator<Item = T>,
        key: impl Fn(&T) -> String,
        filtered: bool,
    ) -> (Vec<T>, Value) {
        let mut metadata = json!({"resourceVersion": self.resource_version.to_string()});
        let Some(limit) = self.limit else {
            return (items.collect(), metadata);
        };
        let page: Vec<T> = items.by_ref().take(limit).collect();
        let rest = items.count();
        if rest > 0
            && let Some(last) = page.last()
        {
            metadata["continue"] = json!(encode(self.resource_version, &key(last)));
            if !filtered {
                metadata["remainingItemCount"] = json!(rest);
            }
        }
        (page, metadata)
    }
}

fn encode(resource_version: u64, after: &str) -> String {
    format!("{TOKEN_VERSION}:{resource_version}:{after}")
}

fn decode(token: &str) -> Result<(u64, String), &'static str> {
    let rest = token
        .strip_prefix(TOKEN_VERSION)
        .and_then(|rest| rest.strip_prefix(':'))
        .ok_or("unknown token version")?;
    let (resource_version, after) = rest.split_once(':').ok_or("no start key")?;
    let resource_version = resource_version
        .parse::<u64>()
        .ok()
        .filter(|rv| *rv > 0)
        .ok_or("incorrect encoded start resourceVersion (version meta.k8s.io/v1)")?;
    if after.is_empty() {
        return Err("encoded start key empty");
    }
    Ok((resource_version, after.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn pages_end_with_a_token_only_while_items_remain() {
        let paging = Paging::of(&query(&[("limit", "2")]), 7, 0).expect("valid");
        let (page, metadata) = paging.cut(["a", "b", "c"].into_iter(), |s| s.to_string(), false);
        assert_eq!(page, ["a", "b"]);
        assert_eq!(metadata["remainingItemCount"], 1);
        let token = metadata["continue"].as_str().expect("token").to_owned();
        let next =
            Paging::of(&query(&[("limit", "2"), ("continue", &token)]), 9, 0).expect("valid token");
        assert_eq!(next.after.as_deref(), Some("b"));
        let (page, metadata) = next.cut(["c"].into_iter(), |s| s.to_string(), false);
        assert_eq!(page, ["c"]);
        assert_eq!(metadata.get("continue"), None);
        assert_eq!(metadata["resourceVersion"], "7", "the first page's version");
    }

    #[test]
    fn bad_tokens_and_combinations_are_refused() {
        let status = |q: &[(&str, &str)], compacted: u64| {
            Paging::of(&query(q), 20, compacted)
                .expect_err("refused")
                .response()
                .status()
                .as_u16()
        };
        let token = encode(10, "a");
        assert_eq!(status(&[("continue", "garbage")], 0), 400);
        assert_eq!(status(&[("continue", &encode(0, "a"))], 0), 400);
        assert_eq!(
            status(&[("continue", &token), ("resourceVersion", "5")], 0),
            400
        );
        assert_eq!(status(&[("continue", &token)], 11), 410);
        assert_eq!(status(&[("limit", "ten")], 0), 400);
        assert!(
            Paging::of(
                &query(&[("continue", &token), ("resourceVersion", "0")]),
                20,
                0
            )
            .is_ok()
        );
    }
}
