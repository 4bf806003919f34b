//! Reading a Kubernetes list in pages (`limit`/`continue`, as client-go's pager and
//! `kubectl` do), so memory holds one page at a time rather than every object of a large
//! cluster or a full node, twice over (kube reads each answer into one buffer, then into
//! objects). The drain, the replacement's Node wait and scale-back's look all read lists
//! this way; each says what a continue token that expired mid-list (410 `Expired`: the
//! list took longer than etcd keeps history) means for it.

use std::future::Future;

use kube::api::{ListParams, ObjectList};
use tokio::time::Instant;

/// A list request's error, as far as paging cares: whether the API server no longer
/// honours the continue token.
pub trait ListError {
    fn is_expired(&self) -> bool;
}

impl ListError for kube::Error {
    /// The API server answers a continue token from before a compaction with 410 `Expired`.
    fn is_expired(&self) -> bool {
        matches!(self, kube::Error::Api(status) if status.code == 410)
    }
}

/// What [`collect`] does when the continue token expired mid-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExpired {
    /// Read the list again from its first page, dropping what was kept, while `until` has
    /// not passed: for a caller that needs the list now (a drain under its deadline).
    RestartUntil(Instant),
    /// Fail with the 410: for a caller that lists again on its next check anyway.
    Fail,
}

impl OnExpired {
    fn restarts_at(self, now: Instant) -> bool {
        matches!(self, OnExpired::RestartUntil(until) if now < until)
    }
}

/// Hands every object of the list to `visit` as its page arrives, dropping each page
/// before the next is read. An expired continue token fails the list: objects already
/// handed out cannot be taken back, so a restart would visit them twice.
pub async fn for_each<K, E, Page>(
    fetch: impl Fn(ListParams) -> Page,
    params: ListParams,
    page_size: u32,
    mut visit: impl FnMut(K),
) -> Result<(), E>
where
    K: Clone,
    Page: Future<Output = Result<ObjectList<K>, E>>,
{
    let first = params.limit(page_size);
    let mut request = first.clone();
    loop {
        let page = fetch(request).await?;
        let next = next_page(&first, page.metadata.continue_);
        page.items.into_iter().for_each(&mut visit);
        match next {
            Some(next) => request = next,
            None => return Ok(()),
        }
    }
}

/// Every object of the list that `keep` turns into what the caller holds of it, read a
/// page at a time. Nothing is handed out before the last page, so a restart on an expired
/// token (see [`OnExpired`]) drops what the first attempt kept and returns no object twice.
pub async fn collect<K, T, E, Page>(
    fetch: impl Fn(ListParams) -> Page,
    params: ListParams,
    page_size: u32,
    on_expired: OnExpired,
    mut keep: impl FnMut(K) -> Option<T>,
) -> Result<Vec<T>, E>
where
    K: Clone,
    E: ListError,
    Page: Future<Output = Result<ObjectList<K>, E>>,
{
    loop {
        let mut kept = Vec::new();
        let listed = for_each(&fetch, params.clone(), page_size, |object| {
            kept.extend(keep(object));
        })
        .await;
        match listed {
            Ok(()) => return Ok(kept),
            Err(error) if error.is_expired() && on_expired.restarts_at(Instant::now()) => {}
            Err(error) => return Err(error),
        }
    }
}

/// The request for the page after one whose answer carried `token`; none after the last
/// page, which carries no token or an empty one.
fn next_page(first: &ListParams, token: Option<String>) -> Option<ListParams> {
    let token = token.filter(|token| !token.is_empty())?;
    Some(first.clone().continue_token(&token))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::time::Duration;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
    use kube::core::{Status, TypeMeta};

    use super::*;

    fn page(items: &[&str], token: Option<&str>) -> ObjectList<String> {
        ObjectList {
            types: TypeMeta::default(),
            metadata: ListMeta {
                continue_: token.map(str::to_owned),
                ..ListMeta::default()
            },
            items: items.iter().map(|item| (*item).to_owned()).collect(),
        }
    }

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("", "").with_code(code)))
    }

    /// A list of three pages (`a b`, `c d`, `e`) whose second token expires once when
    /// `expire_once` (as after an etcd compaction); records every request.
    struct Server {
        requests: RefCell<Vec<ListParams>>,
        expire_once: RefCell<bool>,
    }

    impl Server {
        fn new(expire_once: bool) -> Server {
            Server {
                requests: RefCell::new(Vec::new()),
                expire_once: RefCell::new(expire_once),
            }
        }

        /// [`for_each`] over the whole list in pages of two: its result and what it visited.
        async fn visit_all(&self) -> (Result<(), kube::Error>, Vec<String>) {
            let mut seen = Vec::new();
            let listed = for_each(
                |params| std::future::ready(self.list(&params)),
                ListParams::default(),
                2,
                |item| seen.push(item),
            )
            .await;
            (listed, seen)
        }

        fn list(&self, params: &ListParams) -> Result<ObjectList<String>, kube::Error> {
            self.requests.borrow_mut().push(params.clone());
            match params.continue_token.as_deref() {
                None => Ok(page(&["a", "b"], Some("t1"))),
                Some("t1") => Ok(page(&["c", "d"], Some("t2"))),
                Some("t2") if self.expire_once.replace(false) => Err(status(410)),
                Some("t2") => Ok(page(&["e"], Some(""))),
                Some(_) => Err(status(400)),
            }
        }

        fn tokens(&self) -> Vec<Option<String>> {
            self.requests
                .borrow()
                .iter()
                .map(|params| params.continue_token.clone())
                .collect()
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn the_next_page_carries_the_token_and_keeps_the_first_requests_selector_and_size() {
        let first = ListParams::default().fields("spec.nodeName=n1").limit(7);
        let next = next_page(&first, Some("abc".to_owned()));
        let next = next.as_ref();
        assert_eq!(next.and_then(|p| p.continue_token.as_deref()), Some("abc"));
        assert_eq!(next.and_then(|p| p.limit), Some(7));
        assert_eq!(
            next.and_then(|p| p.field_selector.as_deref()),
            Some("spec.nodeName=n1")
        );
    }

    #[test]
    fn no_token_or_an_empty_one_ends_the_list() {
        let first = ListParams::default().limit(7);
        assert!(next_page(&first, None).is_none());
        assert!(next_page(&first, Some(String::new())).is_none());
    }

    #[test]
    fn only_a_410_is_an_expired_token() {
        assert!(status(410).is_expired());
        assert!(!status(400).is_expired());
        assert!(!status(500).is_expired());
    }

    #[test]
    fn a_restart_is_allowed_only_before_its_deadline() {
        let now = Instant::now();
        assert!(OnExpired::RestartUntil(now + Duration::from_millis(1)).restarts_at(now));
        assert!(!OnExpired::RestartUntil(now).restarts_at(now));
        assert!(!OnExpired::Fail.restarts_at(now));
    }

    #[tokio::test]
    async fn every_page_is_visited_in_order_with_the_page_size_on_every_request() {
        let server = Server::new(false);
        let (listed, seen) = server.visit_all().await;
        assert!(listed.is_ok(), "{listed:?}");
        assert_eq!(seen, ["a", "b", "c", "d", "e"]);
        assert_eq!(
            server.tokens(),
            [None, Some("t1".to_owned()), Some("t2".to_owned())]
        );
        assert!(server.requests.borrow().iter().all(|p| p.limit == Some(2)));
    }

    #[tokio::test]
    async fn an_expired_token_restarts_from_the_first_page_and_returns_each_object_once() {
        let server = Server::new(true);
        let mut offered = 0;
        let kept = collect(
            |params| std::future::ready(server.list(&params)),
            ListParams::default(),
            2,
            OnExpired::RestartUntil(later()),
            |item: String| {
                offered += 1;
                (item != "d").then(|| item.to_uppercase())
            },
        )
        .await;
        assert_eq!(
            kept.ok(),
            Some(
                vec!["A", "B", "C", "E"]
                    .into_iter()
                    .map(str::to_owned)
                    .collect()
            )
        );
        // The first attempt's four objects were offered to `keep` again on the restart.
        assert_eq!(offered, 4 + 5);
        assert_eq!(
            server.tokens(),
            [
                None,
                Some("t1".to_owned()),
                Some("t2".to_owned()),
                None,
                Some("t1".to_owned()),
                Some("t2".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn an_expired_token_fails_the_list_when_restarts_are_not_wanted_or_too_late() {
        for on_expired in [OnExpired::Fail, OnExpired::RestartUntil(Instant::now())] {
            let server = Server::new(true);
            let kept = collect(
                |params| std::future::ready(server.list(&params)),
                ListParams::default(),
                2,
                on_expired,
                Some,
            )
            .await;
            assert!(
                kept.as_ref().is_err_and(ListError::is_expired),
                "{on_expired:?}: {kept:?}"
            );
            assert_eq!(server.requests.borrow().len(), 3, "{on_expired:?}");
        }
    }

    #[tokio::test]
    async fn for_each_fails_on_an_expired_token_after_handing_out_the_pages_before_it() {
        let server = Server::new(true);
        let (listed, seen) = server.visit_all().await;
        assert!(listed.as_ref().is_err_and(ListError::is_expired));
        assert_eq!(seen, ["a", "b", "c", "d"]);
    }

    #[tokio::test]
    async fn another_error_is_never_retried_even_under_restart() {
        let requests = RefCell::new(0);
        let kept: Result<Vec<String>, kube::Error> = collect(
            |_| {
                *requests.borrow_mut() += 1;
                std::future::ready(Err(status(500)))
            },
            ListParams::default(),
            2,
            OnExpired::RestartUntil(later()),
            Some,
        )
        .await;
        assert!(matches!(kept, Err(kube::Error::Api(status)) if status.code == 500));
        assert_eq!(*requests.borrow(), 1);
    }
}
