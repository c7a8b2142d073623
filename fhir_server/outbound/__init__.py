"""What the server sends out: the allow-list of destinations (allow.py) and email
(mail.py)."""
