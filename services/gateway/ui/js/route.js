// Hash routes (#/d/<dataset>/<view>[/<arg>]): bookmarkable, never holding the key.
import { useEffect, useState } from "../vendor/hooks.module.js";

export function parseRoute(hash) {
  const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "models") return { view: "models" };
  if (parts[0] === "d" && parts[1]) {
    return { dataset: parts[1], view: parts[2] || "images", arg: parts[3] || null };
  }
  return { view: "datasets" };
}

export function href(route) {
  if (route.view === "models") return "#/models";
  if (!route.dataset) return "#/";
  const parts = ["d", route.dataset, route.view || "images"];
  if (route.arg) parts.push(route.arg);
  return "#/" + parts.map(encodeURIComponent).join("/");
}

export function go(route) {
  location.hash = href(route);
}

export function useRoute() {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const on = () => setRoute(parseRoute(location.hash));
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return route;
}
