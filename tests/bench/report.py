"""What every benchmark does with its results: print them as a table, and write them as CSV."""
import csv


def report(title, header, rows, csv_path=None):
    """Prints `rows` under `header` (floats to 3 decimals; the first column left-aligned), and
    writes them to `csv_path` when one is given."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(values):
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    print(title)
    print(line(header))
    for row in cells:
        print(line(row))
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
