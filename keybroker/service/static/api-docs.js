"use strict";
function text(tag, content, cls) {
  const node = document.createElement(tag);
  node.textContent = content;
  if (cls) { node.className = cls; }
  return node;
}
function refName(schema) {
  if (!schema) { return ""; }
  if (schema.$ref) { return schema.$ref.split("/").pop(); }
  return schema.type || "";
}
fetch("/openapi.json").then((r) => r.json()).then((api) => {
  document.getElementById("title").textContent = api.info.title + " (v" + api.info.version + ")";
  const routes = document.getElementById("routes");
  routes.textContent = "";
  for (const [path, operations] of Object.entries(api.paths || {})) {
    for (const [method, op] of Object.entries(operations)) {
      const box = document.createElement("div");
      box.className = "route";
      box.appendChild(text("span", method, "method"));
      box.appendChild(text("code", path));
      box.appendChild(text("div", op.summary || op.description || "", "muted"));
      const body = op.requestBody && op.requestBody.content &&
        op.requestBody.content["application/json"];
      if (body) { box.appendChild(text("div", "request: " + refName(body.schema))); }
      for (const [status, response] of Object.entries(op.responses || {})) {
        const content = response.content && response.content["application/json"];
        box.appendChild(text("div", status + ": " + (response.description || "") +
          (content ? " (" + refName(content.schema) + ")" : "")));
      }
      routes.appendChild(box);
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries((api.components || {}).schemas || {})) {
    schemas.appendChild(text("h3", name));
    schemas.appendChild(text("pre", JSON.stringify(schema, null, 2)));
  }
}).catch((error) => {
  document.getElementById("routes").textContent = "could not load openapi.json: " + error;
});
