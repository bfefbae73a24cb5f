//! The scene types: the shapes, colours and sizes a caption can name, and where each object
//! of a scene sits.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Cross,
    Ring,
    Diamond,
}

impl Shape {
    pub const ALL: [Shape; 7] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Cross,
        Shape::Ring,
        Shape::Diamond,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Cross => "cross",
            Shape::Ring => "ring",
            Shape::Diamond => "diamond",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
            Shape::Cross => "crosses",
            Shape::Ring => "rings",
            Shape::Diamond => "diamonds",
        }
    }

    /// How far the shape reaches from its centre, in units of its nominal radius (half the
    /// diameter); only the square's corners stick out.
    pub fn reach(self) -> f64 {
        match self {
            Shape::Square => SQUARE_HALF_SIDE * std::f64::consts::SQRT_2,
            _ => 1.0,
        }
    }
}

/// Half the side of a square of nominal radius 1: a little larger than the inscribed square, so
/// squares look about as big as the other shapes.
pub(super) const SQUARE_HALF_SIDE: f64 = 0.74;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    White,
    Black,
}

impl Colour {
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Orange,
        Colour::White,
        Colour::Black,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
            Colour::White => "white",
            Colour::Black => "black",
        }
    }

    /// The colour's nominal sRGB value; objects are drawn within a few levels of it.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [215, 35, 35],
            Colour::Green => [40, 170, 60],
            Colour::Blue => [35, 80, 215],
            Colour::Yellow => [240, 215, 40],
            Colour::Purple => [135, 50, 175],
            Colour::Orange => [245, 135, 25],
            Colour::White => [245, 245, 245],
            Colour::Black => [20, 20, 20],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub fn word(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// Diameters of the shape's bounding circle, as fractions of the image side.
    pub(super) fn diameter_range(self) -> (f64, f64) {
        match self {
            Size::Small => (0.19, 0.22),
            Size::Large => (0.29, 0.32),
        }
    }
}

/// Along which axis a line of two or three objects runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Objects share a row; they are listed left to right.
    Horizontal,
    /// Objects share a column; they are listed top to bottom.
    Vertical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One object, named by its cell.
    Single,
    /// Two or three objects in one row or column, in order along it.
    Line(Axis),
}

/// One shape in a scene. Coordinates are fractions of the image side, y downwards.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneObject {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    /// The grid cell (row, column), each 0..3.
    pub cell: (usize, usize),
    /// Centre (x, y).
    pub centre: (f64, f64),
    /// Diameter of the circle that holds the whole shape.
    pub diameter: f64,
    /// Small tilt, radians.
    pub rotation: f64,
    /// Per-channel offset from the nominal colour, in 0..255 levels.
    pub tint: [i8; 3],
}

impl SceneObject {
    /// Same shape, colour and size: captions count such objects together.
    pub fn same_kind(&self, other: &SceneObject) -> bool {
        self.shape == other.shape && self.colour == other.colour && self.size == other.size
    }

    /// The radius of the circle around the centre that holds the whole shape.
    pub fn reach(&self) -> f64 {
        self.diameter / 2.0 * self.shape.reach()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Texture {
    /// Smooth value noise: `cells` lattice cells across the image at the coarsest of `octaves`.
    Noise { cells: f64, octaves: u32 },
    /// Parallel stripes, `count` periods across, at `angle` radians; hard or soft edges.
    Stripes { angle: f64, count: f64, sharp: bool },
    /// A checkerboard of `count` squares across, turned by `angle` radians.
    Checks { angle: f64, count: f64 },
    /// A linear ramp from one colour to the other in direction `angle`.
    Gradient { angle: f64 },
    /// A radial ramp around (cx, cy).
    Radial { cx: f64, cy: f64 },
    /// One colour with strong grain.
    Grain,
}

/// A muted two-colour texture behind the objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Background {
    pub texture: Texture,
    /// Linear blend endpoints, RGB in 0..1.
    pub colour_a: [f64; 3],
    pub colour_b: [f64; 3],
    /// Amplitude of per-pixel grain, in 0..1 units.
    pub grain: f64,
    /// Seeds the per-pixel hash noise.
    pub noise_seed: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub layout: Layout,
    /// In order along the line for [`Layout::Line`].
    pub objects: Vec<SceneObject>,
    pub background: Background,
}
