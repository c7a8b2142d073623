"""The admin console under ``/admin`` (docs/admin.md): server-rendered pages for admin
users with TOTP, on the authorization server's own login session. ``routes`` handles
HTTP, ``actions`` holds every change a console user can make, ``views`` what each page
reads, ``pages`` the HTML and ``i18n`` its words."""
