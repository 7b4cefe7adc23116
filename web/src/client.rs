//! The browser's side of talking to the serving layer: server-sent events for live data,
//! `fetch` for actions, and the theme switch. On the server these do nothing: they are
//! only called from effects and event handlers, which the server never runs.

use leptos::prelude::*;
use serde_json::Value;

use crate::Conn;

/// What an action's request ended with: the JSON answer, or the error to show (the
/// server's own sentence when it sent one).
pub type Answer = Result<Value, String>;

#[cfg(feature = "hydrate")]
mod browser {
    use super::*;
    use wasm_bindgen::JsCast;
    use wasm_bindgen::closure::Closure;
    use wasm_bindgen_futures::JsFuture;

    pub fn subscribe(url: &str, event: &str, conn: RwSignal<Conn>, on: impl Fn(Value) + 'static) {
        let Ok(source) = web_sys::EventSource::new(url) else {
            conn.set(Conn::Unreachable);
            return;
        };
        let on_message =
            Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
                if let Some(data) = e.data().as_string()
                    && let Ok(v) = serde_json::from_str::<Value>(&data)
                {
                    conn.set(Conn::Live);
                    on(v);
                }
            });
        let _ = source.add_event_listener_with_callback(event, on_message.as_ref().unchecked_ref());
        on_message.forget();
        let on_open = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| conn.set(Conn::Live));
        source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        on_open.forget();
        // EventSource reconnects by itself; the banner says so meanwhile.
        let on_error =
            Closure::<dyn FnMut(web_sys::Event)>::new(move |_| conn.set(Conn::Unreachable));
        source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        on_error.forget();
        // The stream lives as long as the page.
        std::mem::forget(source);
    }

    pub async fn send(method: &str, url: &str, body: Option<String>) -> Answer {
        let init = web_sys::RequestInit::new();
        init.set_method(method);
        if let Some(body) = &body {
            init.set_body(&wasm_bindgen::JsValue::from_str(body));
        }
        let request =
            web_sys::Request::new_with_str_and_init(url, &init).map_err(|e| format!("{e:?}"))?;
        if body.is_some() {
            let _ = request.headers().set("content-type", "application/json");
        }
        let window = web_sys::window().ok_or("no window")?;
        let response: web_sys::Response = JsFuture::from(window.fetch_with_request(&request))
            .await
            .map_err(|_| "the server is unreachable".to_string())?
            .dyn_into()
            .map_err(|_| "not a response".to_string())?;
        let status = response.status();
        let text = match response.text() {
            Ok(p) => JsFuture::from(p)
                .await
                .ok()
                .and_then(|t| t.as_string())
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        let json = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text.clone()));
        if (200..300).contains(&status) {
            Ok(json)
        } else {
            let message = json
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}: {text}"));
            Err(message)
        }
    }

    pub fn toggle_theme() {
        let Some(window) = web_sys::window() else {
            return;
        };
        let Some(root) = window.document().and_then(|d| d.document_element()) else {
            return;
        };
        let dark_now = match root.get_attribute("data-theme").as_deref() {
            Some("dark") => true,
            Some("light") => false,
            _ => window
                .match_media("(prefers-color-scheme: dark)")
                .ok()
                .flatten()
                .is_some_and(|m| m.matches()),
        };
        let next = if dark_now { "light" } else { "dark" };
        let _ = root.set_attribute("data-theme", next);
        if let Ok(Some(storage)) = window.local_storage() {
            let _ = storage.set_item("tributary-theme", next);
        }
    }
}

/// Open a server-sent event stream; `on` gets each `event` message's JSON. Sets `conn`
/// to live on messages and unreachable on errors (the browser reconnects by itself).
pub fn subscribe(url: &str, event: &str, conn: RwSignal<Conn>, on: impl Fn(Value) + 'static) {
    #[cfg(feature = "hydrate")]
    browser::subscribe(url, event, conn, on);
    #[cfg(not(feature = "hydrate"))]
    let _ = (url, event, conn, on);
}

/// Send a request and hand its answer to `done`. A failure to reach the server also
/// marks the connection unreachable.
pub fn send(
    method: &'static str,
    url: String,
    body: Option<Value>,
    done: impl FnOnce(Answer) + 'static,
) {
    #[cfg(feature = "hydrate")]
    {
        let conn = use_context::<RwSignal<Conn>>();
        leptos::task::spawn_local(async move {
            let answer = browser::send(method, &url, body.map(|b| b.to_string())).await;
            if let Some(conn) = conn {
                match &answer {
                    Err(e) if e == "the server is unreachable" => conn.set(Conn::Unreachable),
                    _ => conn.set(Conn::Live),
                }
            }
            done(answer);
        });
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = (method, url, body, done);
}

/// Switch between light and dark, remembered for this browser.
pub fn toggle_theme() {
    #[cfg(feature = "hydrate")]
    browser::toggle_theme();
}
