"""Writers of a report Table: CSV, Excel (openpyxl) and PDF (reportlab)."""
