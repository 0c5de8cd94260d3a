"""One model's figures on one page: ``page`` (the report's sections and the self-contained HTML) and ``templates/``
(the Jinja2 page it renders)."""
