//! Path routing: `/items`, `/items/:id`, `/static/*rest`.

use super::{Error, IntoResponse, Method, Request, Response};

type Handler<'a> = Box<dyn Fn(Request, Params) -> Response + 'a>;

/// Routes a request to the first route whose method and path pattern match.
///
/// Patterns are split at `/`: a literal segment matches itself, `:name`
/// matches any one segment, and a last segment `*name` matches the rest of
/// the path (possibly empty). A path that matches no pattern is answered
/// `404`; one that matches only with other methods, `405` with an `allow`
/// header. `HEAD` is served by the `GET` route.
///
/// ```ignore
/// fn handle(req: Request) -> Response {
///     Router::new()
///         .get("/items", |_req, _params| list_items())
///         .get("/items/:id", |_req, params| item(params.get("id").unwrap_or_default()))
///         .post("/items", |req, _params| create(req))
///         .handle(req)
/// }
/// ```
#[derive(Default)]
pub struct Router<'a> {
    routes: Vec<(Option<Method>, Vec<Segment>, Handler<'a>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

/// The values a route's `:name` and `*name` segments matched, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// The value matched by `:name` or `*name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl<'a> Router<'a> {
    /// A router with no routes (it answers everything `404`).
    pub fn new() -> Self {
        Router { routes: Vec::new() }
    }

    /// Adds a route for `method` and `pattern`.
    pub fn route<R: IntoResponse>(
        self,
        method: Method,
        pattern: &str,
        handler: impl Fn(Request, Params) -> R + 'a,
    ) -> Self {
        self.add(Some(method), pattern, handler)
    }

    /// Adds a route for `pattern` that takes every method.
    pub fn route_any<R: IntoResponse>(
        self,
        pattern: &str,
        handler: impl Fn(Request, Params) -> R + 'a,
    ) -> Self {
        self.add(None, pattern, handler)
    }

    fn add<R: IntoResponse>(
        mut self,
        method: Option<Method>,
        pattern: &str,
        handler: impl Fn(Request, Params) -> R + 'a,
    ) -> Self {
        let segments = split(pattern)
            .map(|s| {
                if let Some(name) = s.strip_prefix(':') {
                    Segment::Param(name.to_owned())
                } else if let Some(name) = s.strip_prefix('*') {
                    Segment::Rest(name.to_owned())
                } else {
                    Segment::Literal(s.to_owned())
                }
            })
            .collect();
        self.routes.push((
            method,
            segments,
            Box::new(move |req, params| handler(req, params).into_response()),
        ));
        self
    }

    /// Adds a `GET` (and `HEAD`) route.
    pub fn get<R: IntoResponse>(
        self,
        pattern: &str,
        handler: impl Fn(Request, Params) -> R + 'a,
    ) -> Self {
        self.route(Method::Get, pattern, handler)
    }

    /// Adds a `POST` route.
    pub fn post<R: IntoResponse>(
        self,
        pattern: &str,
        handler: impl Fn(Request, Params) -> R + 'a,
    ) -> Self {
        self.route(Method::Post, pattern, handler)
    }

    /// Adds a `PUT` route.
    pub fn put<R: IntoResponse>(
        self,
        pattern: &str,
        handler: impl Fn(Request, Params) -> R + 'a,
    ) -> Self {
        self.route(Method::Put, pattern, handler)
    }

    /// Adds a `DELETE` route.
    pub fn delete<R: IntoResponse>(
        self,
        pattern: &str,
        handler: impl Fn(Request, Params) -> R + 'a,
    ) -> Self {
        self.route(Method::Delete, pattern, handler)
    }

    /// Answers `req` with the first matching route.
    pub fn handle(&self, req: Request) -> Response {
        let path: Vec<&str> = split(req.path()).collect();
        let mut allowed: Vec<&str> = Vec::new();
        let wanted = match req.method() {
            Method::Head => Method::Get,
            m => m.clone(),
        };
        for (method, pattern, handler) in &self.routes {
            let Some(params) = matches(pattern, &path) else {
                continue;
            };
            let Some(method) = method else {
                return handler(req, params);
            };
            if *method == wanted {
                return handler(req, params);
            }
            if !allowed.contains(&method.as_str()) {
                allowed.push(method.as_str());
            }
        }
        if allowed.is_empty() {
            return Response::not_found(req.path());
        }
        let allow = allowed.join(", ");
        Error::new(
            405,
            format!(
                "{} is not allowed on {} (allowed: {allow})",
                req.method(),
                req.path()
            ),
        )
        .into_response()
        .with_header("allow", allow)
    }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn matches(pattern: &[Segment], path: &[&str]) -> Option<Params> {
    let mut params = Vec::new();
    for (i, segment) in pattern.iter().enumerate() {
        match segment {
            Segment::Rest(name) => {
                let rest = path.get(i..).unwrap_or_default().join("/");
                params.push((name.clone(), decode(&rest)));
                return Some(Params(params));
            }
            Segment::Literal(lit) => {
                if path.get(i)? != lit {
                    return None;
                }
            }
            Segment::Param(name) => params.push((name.clone(), decode(path.get(i)?))),
        }
    }
    (pattern.len() == path.len()).then_some(Params(params))
}

fn decode(s: &str) -> String {
    String::from_utf8_lossy(&super::percent_decode(s)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<'static> {
        Router::new()
            .get("/", |_, _| "root")
            .get("/items", |_, _| "list")
            .get("/items/:id", |_, p: Params| {
                format!("item {}", p.get("id").unwrap_or_default())
            })
            .post("/items", |req: Request, _| {
                format!("created {}", req.text().unwrap_or_default())
            })
            .get("/files/*path", |_, p: Params| {
                format!("file {}", p.get("path").unwrap_or_default())
            })
    }

    fn call(method: Method, path: &str) -> (u16, String) {
        let r = router().handle(Request::new(method, path).with_body("x"));
        (r.status(), String::from_utf8_lossy(r.body()).into_owned())
    }

    #[test]
    fn routes_by_method_and_pattern() {
        assert_eq!(call(Method::Get, "/"), (200, "root".into()));
        assert_eq!(call(Method::Get, "/items/"), (200, "list".into()));
        assert_eq!(
            call(Method::Get, "/items/a%20b?x=1"),
            (200, "item a b".into())
        );
        assert_eq!(call(Method::Post, "/items"), (200, "created x".into()));
        assert_eq!(
            call(Method::Get, "/files/a/b.txt"),
            (200, "file a/b.txt".into())
        );
        assert_eq!(call(Method::Get, "/files"), (200, "file ".into()));
        assert_eq!(call(Method::Head, "/items").0, 200);
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405() {
        let (status, body) = call(Method::Get, "/items/7/parts");
        assert_eq!(status, 404);
        assert!(body.contains("/items/7/parts"), "{body}");
        let r = router().handle(Request::new(Method::Delete, "/items"));
        assert_eq!(r.status(), 405);
        assert_eq!(r.header("allow"), Some("GET, POST"));
    }

    #[test]
    fn a_route_for_any_method_catches_the_rest() {
        let router = Router::new().get("/items", |_, _| "list").route_any(
            "/*rest",
            |req: Request, p: Params| {
                format!("{} {}", req.method(), p.get("rest").unwrap_or_default())
            },
        );
        let call = |m, path| {
            let r = router.handle(Request::new(m, path));
            String::from_utf8_lossy(r.body()).into_owned()
        };
        assert_eq!(call(Method::Get, "/items"), "list");
        assert_eq!(call(Method::Delete, "/items"), "DELETE items");
        assert_eq!(call(Method::Post, "/"), "POST ");
    }
}
