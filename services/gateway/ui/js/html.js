// htm bound to preact: html`<div>${value}</div>` (values are text unless they are elements).
import { h } from "../vendor/preact.module.js";
import htm from "../vendor/htm.module.js";

export const html = htm.bind(h);
