//! The login form: the token is checked by the server and kept in a session cookie.

use leptos::prelude::*;

#[component]
pub fn Login(error: Option<String>) -> impl IntoView {
    view! {
        <section class="page login">
            <h2>"Sign in"</h2>
            <p class="muted">"This Tributary has API tokens switched on. Paste a token with the read scope (admin to start runs and replay dead letters); it is kept for this browser session only."</p>
            <form method="post" action="/login">
                <label for="token">"API token"</label>
                <input id="token" name="token" type="password" autocomplete="current-password" required/>
                <button id="login" class="primary" type="submit">"Sign in"</button>
            </form>
            {error.map(|e| view! { <p id="login-error" class="error">{e}</p> })}
        </section>
    }
}
