// The SMART test app driven by tests/test_smart_browser.py, using only the official
// fhirclient library. launch.html starts the authorization (standalone when the URL has
// only `iss`, EHR when it also has `launch`); index.html is the redirect URI: it finishes
// the code exchange and shows the patient and their Observations.
"use strict";

var smartTestApp = (function () {
  var DEFAULT_CLIENT_ID = "smart-browser-test-app";
  var STANDALONE_SCOPE =
    "launch/patient openid fhirUser patient/Patient.rs patient/Observation.rs offline_access";
  var EHR_SCOPE = "launch openid fhirUser patient/*.rs";

  function text(id, value) {
    document.getElementById(id).textContent = value;
  }

  function fail(error) {
    text("status", "failed");
    text("error", String((error && error.message) || error));
  }

  function humanName(patient) {
    var name = (patient.name || [])[0] || {};
    return ((name.given || []).join(" ") + " " + (name.family || "")).trim();
  }

  function launch() {
    var params = new URL(window.location.href).searchParams;
    var isEhr = params.has("launch");
    FHIR.oauth2
      .authorize({
        clientId: params.get("clientId") || DEFAULT_CLIENT_ID,
        scope: params.get("scope") || (isEhr ? EHR_SCOPE : STANDALONE_SCOPE),
        redirectUri: "index.html",
        pkceMode: "required",
      })
      .catch(fail);
  }

  async function show() {
    try {
      var client = await FHIR.oauth2.ready();
      var patient = await client.patient.read();
      var observations = await client.request("Observation?patient=" + client.patient.id, {
        pageLimit: 0,
        flat: true,
      });
      var codes = observations
        .map(function (o) {
          return ((o.code || {}).coding || [{}])[0].code;
        })
        .sort();
      text("patient-name", humanName(patient));
      text("patient-id", patient.id);
      text("fhir-user", client.user.fhirUser || "");
      text("granted-scope", client.state.tokenResponse.scope || "");
      text("observation-count", String(observations.length));
      text("observation-codes", codes.join(","));
      text("refresh-token", client.state.tokenResponse.refresh_token ? "yes" : "no");
      window.smartClient = client; // lets the test probe what else the token can reach
      text("status", "done");
    } catch (error) {
      fail(error);
    }
  }

  return { launch: launch, show: show };
})();
