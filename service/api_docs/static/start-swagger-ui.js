// Starts Swagger UI on the docs page. A served file rather than an inline script, so
// the page runs under `script-src 'self'`; the page names its OpenAPI document in
// data-openapi-url.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    // The default validator is a third-party service: nothing leaves this page.
    validatorUrl: null,
  });
})();
