# Date and time formats for the site's language (settings.FORMAT_MODULE_PATH).
# English's own default, "Dec. 6, 2026, 1:17 a.m.", hides the seconds and the
# zone that operators compare times in the admin by: every date and time the
# admin shows by default (detail pages, lists of plain fields) reads
# "2026-12-06 01:17:05 UTC" instead, as the lists' own columns do.
DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = DATETIME_FORMAT
