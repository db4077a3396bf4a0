'use strict';
// Says why the last sign-in failed (the server redirects here with ?error=).
(function () {
  const reasons = {
    invalid: 'This control plane does not know that key. Check it, or create one with `oz-agent-worker api-keys create --team NAME`.',
    missing: 'Enter a team API key.',
    database: 'The control plane could not read its database; see its log.',
    form: 'The form could not be read; try again.',
    random: 'The control plane could not create a session; see its log.',
  };
  const code = new URLSearchParams(window.location.search).get('error');
  if (code) {
    const p = document.getElementById('login-error');
    p.textContent = reasons[code] || 'Sign-in failed.';
    p.hidden = false;
  }
})();
