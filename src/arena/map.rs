//! The arena's grid: walls, floor and spawn points, parsed from text.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The map the binary and examples use (`assets/arena/map.txt`).
pub const DEFAULT_MAP: &str = include_str!("../../assets/arena/map.txt");

/// A cell on the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pos {
    /// Column, from 0 at the left.
    pub x: i16,
    /// Row, from 0 at the top.
    pub y: i16,
}

/// A facing or moving direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dir {
    /// Up (y - 1).
    North,
    /// Right (x + 1).
    East,
    /// Down (y + 1).
    South,
    /// Left (x - 1).
    West,
}

impl Dir {
    /// All four directions.
    pub const ALL: [Dir; 4] = [Dir::North, Dir::East, Dir::South, Dir::West];

    /// The neighbouring cell in this direction.
    pub fn step(self, from: Pos) -> Pos {
        let (dx, dy) = match self {
            Dir::North => (0, -1),
            Dir::East => (1, 0),
            Dir::South => (0, 1),
            Dir::West => (-1, 0),
        };
        Pos {
            x: from.x.saturating_add(dx),
            y: from.y.saturating_add(dy),
        }
    }
}

/// Why a map text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// No rows at all.
    #[error("the map is empty")]
    Empty,
    /// Rows of different lengths.
    #[error("row {row} has {found} cells, the first row has {expected}")]
    Ragged {
        /// The row (from 0).
        row: usize,
        /// Its length.
        found: usize,
        /// The first row's length.
        expected: usize,
    },
    /// A character other than `#`, `.` or `S`.
    #[error("unknown cell {found:?} at row {row}, column {column}")]
    UnknownCell {
        /// The character.
        found: char,
        /// Its row.
        row: usize,
        /// Its column.
        column: usize,
    },
    /// No `S` cell.
    #[error("the map has no spawn point (S)")]
    NoSpawn,
    /// Wider or taller than 256 cells.
    #[error("the map is larger than 256 x 256")]
    TooLarge,
}

/// A rectangular grid of walls and floor with spawn points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaMap {
    width: i16,
    height: i16,
    walls: Vec<bool>,
    spawns: Vec<Pos>,
}

impl ArenaMap {
    /// Parses `#` (wall), `.` (floor) and `S` (spawn on floor), one row a line.
    pub fn parse(text: &str) -> Result<Self, MapError> {
        let rows: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .collect();
        let width = rows.first().ok_or(MapError::Empty)?.chars().count();
        if width > 256 || rows.len() > 256 {
            return Err(MapError::TooLarge);
        }
        let mut walls = Vec::with_capacity(width * rows.len());
        let mut spawns = Vec::new();
        for (row, line) in rows.iter().enumerate() {
            let found = line.chars().count();
            if found != width {
                return Err(MapError::Ragged {
                    row,
                    found,
                    expected: width,
                });
            }
            for (column, cell) in line.chars().enumerate() {
                match cell {
                    '#' => walls.push(true),
                    '.' => walls.push(false),
                    'S' => {
                        walls.push(false);
                        spawns.push(Pos {
                            x: column as i16,
                            y: row as i16,
                        });
                    }
                    found => return Err(MapError::UnknownCell { found, row, column }),
                }
            }
        }
        if spawns.is_empty() {
            return Err(MapError::NoSpawn);
        }
        Ok(Self {
            width: width as i16,
            height: rows.len() as i16,
            walls,
            spawns,
        })
    }

    /// Columns.
    pub fn width(&self) -> i16 {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> i16 {
        self.height
    }

    /// Spawn points in reading order.
    pub fn spawns(&self) -> &[Pos] {
        &self.spawns
    }

    /// Whether `pos` is outside the grid or a wall.
    pub fn blocked(&self, pos: Pos) -> bool {
        if pos.x < 0 || pos.y < 0 || pos.x >= self.width || pos.y >= self.height {
            return true;
        }
        self.walls[pos.y as usize * self.width as usize + pos.x as usize]
    }
}

impl Default for ArenaMap {
    fn default() -> Self {
        Self::parse(DEFAULT_MAP).expect("the bundled map is valid")
    }
}

impl fmt::Display for ArenaMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for y in 0..self.height {
            for x in 0..self.width {
                let pos = Pos { x, y };
                let c = if self.blocked(pos) {
                    '#'
                } else if self.spawns.contains(&pos) {
                    'S'
                } else {
                    '.'
                };
                write!(f, "{c}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_map_parses_and_round_trips() {
        let map = ArenaMap::default();
        assert_eq!((map.width(), map.height()), (32, 20));
        assert_eq!(map.spawns().len(), 12);
        assert_eq!(ArenaMap::parse(&map.to_string()).unwrap(), map);
    }

    #[test]
    fn bad_maps_name_their_fault() {
        assert_eq!(ArenaMap::parse(""), Err(MapError::Empty));
        assert_eq!(
            ArenaMap::parse("#.\n#"),
            Err(MapError::Ragged {
                row: 1,
                found: 1,
                expected: 2
            })
        );
        assert_eq!(
            ArenaMap::parse("#x"),
            Err(MapError::UnknownCell {
                found: 'x',
                row: 0,
                column: 1
            })
        );
        assert_eq!(ArenaMap::parse("#."), Err(MapError::NoSpawn));
    }
}
