/* The seed's /static/receive.html and /static/send.html now live at /receive
 * and /send: go there, keeping ?id= and ?command= (the meta refresh of the
 * page is the fallback without scripts, and loses the query). */
"use strict";
(() => {
  const target = document.documentElement.dataset.target;
  if (target) location.replace(target + location.search + location.hash);
})();
