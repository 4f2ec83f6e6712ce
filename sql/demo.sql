-- imagestore demo: a sharded image table, queries, and an atomic multi-shard transaction.
-- Run from the repository root: bash sql/demo.sh
-- (it builds the library, links ./corpus to ../shared/corpus/images and runs this file).
.load target/release/libimagestore
.headers on
.mode column

.print '== A table split over 4 shard files, with a column of our own'
DROP TABLE IF EXISTS photos;
CREATE VIRTUAL TABLE photos USING imagestore(shards=4, album TEXT, thumb BLOB, phash INTEGER);

.print '== Import every image of the corpus in one transaction (all shards or none)'
INSERT INTO photos(name, data, album)
  SELECT substr(name, 9), data, 'corpus' FROM fsdir('corpus/') WHERE data IS NOT NULL ORDER BY name;
SELECT count(*) AS images, sum(bytes) AS bytes FROM photos;

.print '== Metadata, derived from each image header (no blob is read here)'
SELECT format, count(*) AS n, sum(bytes) AS bytes, max(width) AS widest FROM photos GROUP BY format ORDER BY n DESC;

.print '== Where the rows live: the hidden shard column'
SELECT shard, count(*) AS rows FROM photos GROUP BY shard;

.print '== Point read by id (one shard), and a range served in id order without a sort'
SELECT id, name, format, width, height FROM photos WHERE id = 3;
SELECT id, name FROM photos WHERE id BETWEEN 10 AND 14 ORDER BY id;
EXPLAIN QUERY PLAN SELECT data FROM photos WHERE id = 3;

.print '== Exact duplicates by BLAKE3 hash (after storing one image twice)'
INSERT INTO photos(name, data, album) SELECT 'camera-copy.png', data, 'copies' FROM photos WHERE name = 'camera.png';
SELECT a.name, b.name FROM photos a JOIN photos b ON a.hash = b.hash AND a.id < b.id;

.print '== A transaction over several shards, rolled back: nothing changes'
BEGIN;
DELETE FROM photos WHERE format = 'png';
SELECT count(*) AS during_transaction FROM photos;
ROLLBACK;
SELECT count(*) AS after_rollback FROM photos;

.print '== A failed statement changes nothing: one bad row refuses the whole INSERT (the error is expected)'
INSERT INTO photos(name, data) VALUES ('ok.png', (SELECT data FROM photos WHERE id = 1)), ('notes.txt', CAST('not an image' AS BLOB));
SELECT count(*) AS after_refused_insert FROM photos;

.print '== An atomic multi-shard commit: renames and a delete across shards'
BEGIN;
UPDATE photos SET album = 'favourites' WHERE name IN ('astronaut.png', 'coffee.png', 'rocket.jpg', 'chelsea.png');
DELETE FROM photos WHERE name = 'text.png';
COMMIT;
SELECT shard, name, album FROM photos WHERE album = 'favourites' ORDER BY id;
SELECT count(*) AS images FROM photos;

.print '== Each shard is an ordinary SQLite file'
ATTACH 'demo.photos.shard0.db' AS shard0;
SELECT count(*) AS rows_in_shard0 FROM shard0.images;
DETACH shard0;

.print '== Map tiles: with index(z, x, y), a lookup by tile searches each shard instead of scanning'
CREATE VIRTUAL TABLE tiles USING imagestore(shards=8, z INTEGER, x INTEGER, y INTEGER, index(z, x, y));
INSERT INTO tiles(data, z, x, y)
  WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 255)
  SELECT (SELECT data FROM photos WHERE name = 'no_time_for_that_tiny.gif'), 12, i % 16, i / 16 FROM n;
SELECT id, z, x, y, format, width, height FROM tiles WHERE z = 12 AND x = 3 AND y = 7;
EXPLAIN QUERY PLAN SELECT data FROM tiles WHERE z = 12 AND x = 3 AND y = 7;

.print '== Image functions on any blob'
SELECT name, image_info(data) AS info FROM photos WHERE name IN ('rocket.jpg', 'multipage.tif');
SELECT name, image_otsu(data) AS otsu_level, json_extract(image_regions(data), '$.count') AS regions FROM photos WHERE name = 'coins.png';

.print '== Whole table on every core, in one atomic transaction: 256-px WebP thumbnails and perceptual hashes'
SELECT imagestore_derive('photos', 'thumb', 'thumbnail', 256, 'webp') IS NOT NULL AS thumbnails_done;
SELECT imagestore_derive('photos', 'phash', 'phash') IS NOT NULL AS hashes_done;
SELECT name, json_extract(image_info(thumb), '$.width') AS w, json_extract(image_info(thumb), '$.height') AS h, length(thumb) AS bytes
  FROM photos WHERE name IN ('astronaut.png', 'wood-d.webp');

.print '== Look-alikes of motorcycle_left.png by perceptual hash'
SELECT name, image_distance(phash, (SELECT phash FROM photos WHERE name = 'motorcycle_left.png')) AS distance
  FROM photos ORDER BY distance LIMIT 3;

.print '== Every image re-hashed and every shard checked'
SELECT json_extract(imagestore_check('photos'), '$.ok') AS ok, json_extract(imagestore_check('photos'), '$.rows') AS rows;

.print '== A consistent online backup across all shards, verified'
SELECT json_extract(imagestore_backup('photos', 'demo-backup'), '$.rows') AS rows_backed_up;
SELECT json_extract(imagestore_verify('demo-backup'), '$.ok') AS backup_ok;

.print '== One more image, then an incremental backup into the same folder: it copies only that image'
INSERT INTO photos(name, data, album) VALUES ('rocket-again.png', image_convert(readfile('corpus/rocket.jpg'), 'png'), 'later');
SELECT json_extract(s, '$.generation') AS generation, json_extract(s, '$.rows') AS rows,
       json_extract(s, '$.images_copied') AS images_copied, json_extract(s, '$.image_bytes_copied') AS bytes_copied
  FROM (SELECT imagestore_backup('photos', 'demo-backup') AS s);

.print '== Restored into a new 3-shard table, verified first; it holds the same images'
CREATE VIRTUAL TABLE restored USING imagestore(restore_from='demo-backup', shards=3);
SELECT (SELECT count(*) FROM restored) AS restored_rows,
       (SELECT count(*) FROM restored r JOIN photos p ON p.id = r.id AND p.hash = r.hash AND p.album IS r.album) AS identical;
