// The OAuth callback's address carries a one-time code and state. Once its page has
// loaded, take them out of the address bar and the history entry, so they are not
// copied, bookmarked or shared. A served file, not an inline script: the page runs
// under `script-src 'self'`.
history.replaceState(null, "", location.pathname);
